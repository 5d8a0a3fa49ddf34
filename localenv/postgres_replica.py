"""PostgreSQL with an asynchronous streaming replica: the regions topology's PostgreSQL.

The primary (region a) is the single server of ``localenv/postgres_server.py`` that also
streams its WAL: ``wal_level=replica``, replication connections from the loopback network
trusted in ``pg_hba.conf`` (every address here is on ``lo``), and a physical replication
slot per replica, so a replica that is down keeps its place (the primary keeps the WAL it
has not received; ``max_slot_wal_keep_size`` bounds that at 1 GiB, then the slot is
invalidated rather than filling the disk).

A replica (region b) starts as a copy of the primary (``pg_basebackup -R``: it writes
``standby.signal`` and ``primary_conninfo``), then replays the primary's WAL as it streams
(hot standby: it answers reads; a write is refused with ``ReadOnlySqlTransaction``). The
application's role, database and schema come from the primary. ::

    primary = PostgresPrimary(settings_a, state=...)      # settings_a.postgres_dsn: its address
    replica = PostgresReplica(settings_b, state=..., primary=primary)
    primary.replication()      # per replica: state, sent/replayed bytes behind, replay lag
    replica.replay_delay()     # seconds since the last replayed transaction's commit
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from localenv.host import run
from localenv.postgres_server import PG_BIN, Postgres

SLOT = "replica_{name}"
MAX_SLOT_WAL_KEEP = "1GB"


def _superuser_connection(server: Postgres, timeout: float = 5.0) -> Any:
    import psycopg

    return psycopg.connect(host=str(server.socket_dir), port=server.port, user=server.superuser,
                           dbname="postgres", autocommit=True, connect_timeout=max(1, round(timeout)))


@dataclass
class PostgresPrimary(Postgres):
    """The primary: takes writes and streams them to its replicas."""

    # The replicas' slot names (``replica_<name>``): made on every start.
    replicas: tuple[str, ...] = ("b",)

    def prepare(self) -> None:
        super().prepare()
        hba = self.home / "data" / "pg_hba.conf"
        line = "host replication all 127.0.0.0/8 trust  # localenv/postgres_replica.py: the replicas"
        text = hba.read_text()
        if line not in text:  # first: pg_hba.conf is first-match, initdb's own lines ask a password
            hba.write_text(line + "\n" + text)

    def command(self) -> list[str]:
        return [*super().command(), "-c", "wal_level=replica", "-c", "max_wal_senders=10",
                "-c", "max_replication_slots=10", "-c", f"max_slot_wal_keep_size={MAX_SLOT_WAL_KEEP}"]

    def ready(self, timeout: float) -> None:
        super().ready(timeout)
        with _superuser_connection(self, timeout) as conn:
            for name in self.replicas:
                slot = SLOT.format(name=name)
                if not conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
                    conn.execute("SELECT pg_create_physical_replication_slot(%s)", (slot,))

    def replication(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Per connected replica: its state, the bytes it has not replayed yet and the lags the
        primary measured (seconds; None when idle)."""
        with _superuser_connection(self, timeout) as conn:
            rows = conn.execute(
                "SELECT application_name, client_addr::text, state, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                "extract(epoch FROM write_lag), extract(epoch FROM replay_lag) FROM pg_stat_replication"
            ).fetchall()
        return [{"name": r[0], "address": r[1], "state": r[2], "behind_bytes": r[3],
                 "write_lag_s": None if r[4] is None else float(r[4]),
                 "replay_lag_s": None if r[5] is None else float(r[5])} for r in rows]


@dataclass
class PostgresReplica(Postgres):
    """A hot standby of ``primary``, streaming from it through slot ``replica_<name>``."""

    primary: PostgresPrimary | None = None
    replica_name: str = "b"
    start_timeout: ClassVar[float] = 300.0  # the first start copies the primary

    def init_data(self, data: Path) -> None:
        if self.primary is None:
            raise ValueError("a replica needs its primary")
        run([str(PG_BIN / "pg_basebackup"), "-h", self.primary.host, "-p", str(self.primary.port),
             "-U", self.primary.superuser, "-D", str(data), "-R", "-X", "stream",
             "-S", SLOT.format(name=self.replica_name), "--checkpoint=fast",
             "-d", f"application_name=replica_{self.replica_name}"],
            cwd=self.home, timeout=600, **self.as_user)

    def command(self) -> list[str]:
        return [*super().command(), "-c", "hot_standby=on", "-c", "hot_standby_feedback=on"]

    def ready(self, timeout: float) -> None:
        self.check(timeout)  # the role and database are the primary's: nothing to create

    def replay_delay(self, timeout: float = 5.0) -> float | None:
        """Seconds since the commit of the last transaction it replayed (None: none yet)."""
        with _superuser_connection(self, timeout) as conn:
            row = conn.execute("SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())").fetchone()
        return None if row[0] is None else float(row[0])

    def wait_caught_up(self, timeout: float = 60.0) -> float:
        """Wait until the primary's replication view shows nothing left to replay; the seconds it took."""
        assert self.primary is not None
        began = time.monotonic()
        while True:
            rows = [r for r in self.primary.replication() if r["name"] == f"replica_{self.replica_name}"]
            if rows and rows[0]["state"] == "streaming" and rows[0]["behind_bytes"] == 0:
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"replica {self.replica_name} not caught up in {timeout} s: {rows}")
            time.sleep(0.1)
