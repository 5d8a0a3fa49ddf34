"""PostgreSQL 15 as a local server, from the Debian package: its own data folder (owned by
the ``postgres`` user when we run as root), the application role and database created on
first boot; the machine's own PostgreSQL is adopted instead when it holds the port."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from localenv.host import require_binary, run
from localenv.service import Service

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Postgres(Service):
    name: ClassVar[str] = "postgres"
    start_timeout: ClassVar[float] = 60.0
    stop_signal: ClassVar[int] = signal.SIGINT  # "fast" shutdown: do not wait for clients
    superuser: ClassVar[str] = "postgres"  # the system user that runs it, and its DB role

    @property
    def dsn(self) -> dict[str, str]:
        from psycopg.conninfo import conninfo_to_dict

        return {k: str(v) for k, v in conninfo_to_dict(self.settings.postgres_dsn).items()}

    @property
    def host(self) -> str:
        return self.dsn.get("host", "127.0.0.1")

    @property
    def port(self) -> int:
        return int(self.dsn.get("port", 5432))

    @property
    def run_as(self) -> str | None:
        return self.superuser if os.geteuid() == 0 else None  # postgres refuses to run as root

    @property
    def home(self) -> Path:
        """Owned by the postgres user; outside .state if that user cannot reach .state."""
        if self.run_as is None or _traversable_by_others(self.state):
            return self.state / "postgres"
        return Path("/var/lib/postgresql") / f"timeline-{_digest(self.state)}"

    @property
    def cwd(self) -> Path:
        return self.home

    @property
    def socket_dir(self) -> Path:
        """For the superuser's local connections; a socket path must stay under 108 bytes."""
        preferred = self.home / "run"
        if len(str(preferred)) < 80:
            return preferred
        return Path("/tmp") / f"timeline-pg-{_digest(self.state)}"

    def data_dirs(self) -> list[Path]:
        return [self.home, self.socket_dir]

    @property
    def marker(self) -> str:
        return str(self.home / "data")

    def check(self, timeout: float) -> None:
        import psycopg

        with psycopg.connect(
            self.settings.postgres_dsn, connect_timeout=max(1, round(timeout))
        ) as conn:
            conn.execute("SELECT 1").fetchone()

    def ready(self, timeout: float) -> None:
        try:
            self.check(timeout)
        except Exception:
            if self.our_pid() is None:
                raise
            self._bootstrap(timeout)  # first boot: create the application role/database
            self.check(timeout)

    def prepare(self) -> None:
        if not (PG_BIN / "postgres").exists():
            require_binary(str(PG_BIN / "postgres"), "postgresql")
        home, data = self.home, self.home / "data"
        for path in (home, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.run_as:
                shutil.chown(path, self.run_as, self.run_as)
        if not (data / "PG_VERSION").exists():
            shutil.rmtree(data, ignore_errors=True)
            self.init_data(data)

    @property
    def as_user(self) -> dict:
        """``run``'s keywords that run a command as the server's system user."""
        return {"user": self.run_as, "group": self.run_as, "extra_groups": []} if self.run_as else {}

    def init_data(self, data: Path) -> None:
        """A new data folder (``localenv/postgres_replica.py``: a copy of the primary's)."""
        run(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", self.superuser,
             "--auth-local=trust", "--auth-host=scram-sha-256",
             "--encoding=UTF8", "--no-locale"],
            cwd=self.home, timeout=300, **self.as_user,
        )

    def command(self) -> list[str]:
        return [
            str(PG_BIN / "postgres"), "-D", str(self.home / "data"),
            "-c", f"listen_addresses={self.host}", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "max_connections=200", "-c", "logging_collector=off",
        ]

    def _bootstrap(self, timeout: float) -> None:
        """Create the DSN's role (with its password) and database, as the superuser."""
        import psycopg
        from psycopg import sql

        user, password = self.dsn.get("user", "timeline"), self.dsn.get("password", "")
        dbname = self.dsn.get("dbname", user)
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=self.superuser,
            dbname="postgres", autocommit=True, connect_timeout=max(1, round(timeout)),
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(user), sql.Literal(password)
                )
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(dbname), sql.Identifier(user)
                    )
                )

    def adopt_external(self) -> None:
        """The machine's own PostgreSQL: try to create our role/database through psql."""
        user = self.dsn.get("user", "timeline")
        variables = {
            "user": user, "password": self.dsn.get("password", ""),
            "dbname": self.dsn.get("dbname", user),
        }
        psql = shutil.which("psql") or str(PG_BIN / "psql")
        argv = ["runuser", "-u", self.superuser, "--", psql, "-X", "-q", "-p", str(self.port),
                "-v", "ON_ERROR_STOP=1", "-f", "-"]
        for key, value in variables.items():
            argv[-2:-2] = ["-v", f"{key}={value}"]
        try:
            subprocess.run(argv, input=_PSQL_BOOTSTRAP, capture_output=True, text=True,
                           timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass


_PSQL_BOOTSTRAP = r"""
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'user', :'password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'dbname', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname')\gexec
"""


def _digest(path: Path) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()[:8]


def _traversable_by_others(path: Path) -> bool:
    """Whether another user (postgres) can reach ``path``: o+x on every existing parent."""
    for part in [path, *path.parents]:
        if part.exists() and not part.stat().st_mode & stat.S_IXOTH:
            return False
    return True
