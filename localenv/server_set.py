"""A private set of the four servers: its own folder and ports (the fault suite's)."""
from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import ClassVar

from localenv.cassandra_server import Cassandra
from localenv.host import log, signal_tree
from localenv.kafka_server import Kafka
from localenv.postgres_server import Postgres
from localenv.redis_server import Redis
from localenv.service import Outcome, Service, ServicesError, stop_all
from localenv.services import (SERVICE_TYPES, exclusive, failure_report, raise_failed, start_all, start_or_reuse,
                               wait_ready)
from settings import Settings, get_settings


class ServerSet:
    """The four servers in a folder of their own, on ports of their own.

    For tests that kill, pause or restart servers (``ops.faults``) without touching the
    shared ones ``./dev services up`` runs on the default ports, and for several instances
    on one machine. Ports from ``base_port``: Kafka +0 (its KRaft controller +1), Cassandra
    +2 (internode +3), Redis +4, PostgreSQL +5, the JMX exporter agents of Kafka +6 and
    Cassandra +7. ``settings`` are the base settings with these
    servers' addresses (topics, keyspace and the rest stay the caller's business)::

        servers = ServerSet(STATE / "faults", ServerSet.free_base_port())
        servers.up()                           # start what is not running, wait for each
        servers.kill("redis"); servers.start("redis")   # SIGKILL (the process tree), restart
        servers.pause("kafka"); servers.resume("kafka") # SIGSTOP / SIGCONT
        servers.down()                         # or reset(): down, then delete the folder
    """

    OFFSETS: ClassVar[dict[str, int]] = {
        "kafka": 0, "kafka-controller": 1, "cassandra": 2, "cassandra-internode": 3,
        "redis": 4, "postgres": 5, "kafka-metrics": 6, "cassandra-metrics": 7,
    }
    SPAN: ClassVar[int] = 8

    def __init__(self, state_dir: Path, base_port: int, settings: Settings | None = None,
                 host: str = "127.0.0.1") -> None:
        self.state = Path(state_dir).resolve()
        self.base_port = base_port
        self.host = host
        base = settings or get_settings()
        self.settings = self.with_servers(base)
        self._services: dict[str, Service] = {
            svc.name: svc for svc in (
                Cassandra(self.settings, state=self.state, internode_port=base_port + 3,
                          metrics_port=base_port + 7),
                Kafka(self.settings, state=self.state, metrics_port=base_port + 6),
                Postgres(self.settings, state=self.state),
                Redis(self.settings, state=self.state),
            )
        }

    def with_servers(self, settings: Settings) -> Settings:
        """``settings`` pointed at this set's servers (same user, password and database)."""
        from psycopg.conninfo import conninfo_to_dict

        dsn = conninfo_to_dict(settings.postgres_dsn)
        user, password = dsn.get("user", "timeline"), dsn.get("password", "timeline")
        host, port = self.host, self.base_port
        return settings.replace(
            kafka_bootstrap=f"{host}:{port}",
            cassandra_hosts=(host,),
            cassandra_port=port + 2,
            redis_url=f"redis://{host}:{port + 4}/0",
            postgres_dsn=f"postgresql://{user}:{password}@{host}:{port + 5}/{dsn.get('dbname', user)}",
        )

    @classmethod
    def ports_free(cls, base_port: int, host: str = "127.0.0.1") -> bool:
        for port in range(base_port, base_port + cls.SPAN):
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
                return False
        return True

    @classmethod
    def free_base_port(cls, start: int = 29100, step: int = 10, tries: int = 50) -> int:
        """The first ``start + k * step`` whose ports nobody listens on."""
        for k in range(tries):
            if cls.ports_free(start + k * step):
                return start + k * step
        raise ServicesError(f"no free block of {cls.SPAN} ports from {start}")

    def services(self) -> list[Service]:
        return [self._services[cls.name] for cls in SERVICE_TYPES]

    def service(self, name: str) -> Service:
        return self._services[name]

    def __getitem__(self, name: str) -> Service:
        return self._services[name]

    def up(self, echo=log) -> list[Outcome]:
        """Start every server of the set that is not running and wait until each answers.
        A port held by a process this set did not start is an error: never adopt it."""
        began = time.monotonic()
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o755)  # PostgreSQL runs as its own user and keeps its data here
        with exclusive(self.state / "run" / "up.lock"):
            for svc in self.services():
                if svc.our_pid() is None and svc.port_taken():
                    raise ServicesError(f"{svc.name}: port {svc.port} is taken by a process this "
                                        f"server set ({self.state}) did not start")
            outcomes = start_all(self.settings, self.services())
            for outcome in outcomes:
                echo(outcome.line())
            raise_failed(outcomes)
        echo(f"server set {self.state} on ports {self.base_port}..{self.base_port + self.SPAN - 1}"
             f" up in {time.monotonic() - began:.1f}s")
        return outcomes

    def pid(self, name: str) -> int | None:
        return self._services[name].our_pid()

    def signal(self, name: str, sig: int) -> int:
        """Send ``sig`` to the server and every process below it (PostgreSQL: the postmaster and
        its backends, each in a session of its own; the others are one process); returns the pid."""
        pid = self.pid(name)
        if pid is None:
            raise ServicesError(f"{name} of {self.state} is not running")
        signal_tree(pid, sig)
        return pid

    def kill(self, name: str, timeout: float = 30.0) -> int:
        """SIGKILL one server (``Service.kill``); returns when it is gone and its port is free."""
        return self._services[name].kill(timeout)

    def pause(self, name: str) -> int:
        return self.signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> int:
        return self.signal(name, signal.SIGCONT)

    def start(self, name: str) -> Outcome:
        """Start one server (e.g. after ``kill``) and wait until it answers."""
        svc = self._services[name]
        result = start_or_reuse(svc)
        outcome = result if isinstance(result, Outcome) else wait_ready(svc, result)
        if not outcome.up:
            raise ServicesError(failure_report([outcome]))
        return outcome

    def down(self, echo=log) -> None:
        """Stop (SIGCONT first, in case one is paused) every server of the set."""
        svcs = self.services()
        for svc in svcs:
            pid = svc.our_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal_tree(pid, signal.SIGCONT)
        stop_all(svcs, [f"{svc.name:<10}" for svc in svcs], echo)

    def reset(self, echo=log) -> None:
        """down, then delete everything the set keeps (its folder, PostgreSQL's data)."""
        self.down(echo)
        for path in sorted({p for svc in self.services() for p in svc.data_dirs()} | {self.state}):
            if path.exists():
                shutil.rmtree(path)
                echo(f"{'reset':<10} removed {path}")
