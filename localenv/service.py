"""What every local server shares: the ``Service`` base (prepare, start, check, stop, its
state folder and pid file) and the ``Outcome`` of bringing one up.

One module per server builds on it: ``kafka_server``, ``cassandra_server``, ``redis_server``,
``postgres_server`` (named so none of them shadows the client library of its server).
"""
from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from localenv.host import STATE, pid_alive, pid_mid_exec, proc_view, signal_tree, spawn, stop_pid, tail, timer_slack_ns
from settings import Settings


class ServicesError(RuntimeError):
    """A server did not come up (its log tail is in the message)."""


@dataclass
class Outcome:
    name: str
    address: str
    up: bool
    detail: str
    log_tail: tuple[str, ...] = ()

    def line(self) -> str:
        state = "up" if self.up else "DOWN"
        return f"{self.name:<10} {state:<4}  {self.address:<15}  ({self.detail})"


@dataclass
class Service:
    """A local server: how to prepare, start, check and stop it."""

    settings: Settings
    setup_seconds: float = 0.0  # time start() spent installing/fetching/initialising
    # Folder of this server's data, logs and pid file: ``.state/`` for the servers of
    # ``./dev services``, another one for a private set (``ServerSet``).
    state: Path = STATE

    name: ClassVar[str]
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 30.0
    stop_signal: ClassVar[int] = signal.SIGTERM

    # -- to implement
    @property
    def host(self) -> str:
        raise NotImplementedError

    @property
    def port(self) -> int:
        raise NotImplementedError

    def check(self, timeout: float) -> None:
        """A real request to the server; raises if it does not answer properly."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Install binaries/jars and write config; cheap when already done."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def data_dirs(self) -> list[Path]:
        return [self.state / self.name]

    @property
    def marker(self) -> str:
        """A substring of our server's command line: its config or data path under .state,
        so a recycled pid, or the same server run from another checkout, never matches."""
        raise NotImplementedError

    # -- shared behaviour
    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state / "run"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.logs / f"{self.name}.log"

    def log_files(self) -> list[Path]:
        return [self.log_file]

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def run_as(self) -> str | None:
        return None

    @property
    def cwd(self) -> Path:
        return self.state

    def env(self) -> dict[str, str] | None:
        """The process's environment (None: this process's own)."""
        return None

    def ready(self, timeout: float) -> None:
        """Like check(), plus any first-boot setup (PostgreSQL creates its role)."""
        self.check(timeout)

    def is_up(self, timeout: float = 3.0) -> bool:
        try:
            self.check(timeout)
            return True
        except Exception:
            return False

    def recorded_pid(self) -> int | None:
        """The pid in the pid file of the server this package started (None: no file)."""
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def our_pid(self) -> int | None:
        """Pid of the server this package started, if it still runs."""
        pid = self.recorded_pid()
        return pid if pid is not None and pid_alive(pid, self.marker) else None

    def mid_exec(self) -> bool:
        """Whether the server this package started is still between its launch and its own
        command line (``host.pid_mid_exec``): not lost, only slow to load."""
        pid = self.recorded_pid()
        return pid is not None and pid_mid_exec(pid)

    def describe_lost_pid(self) -> str:
        """Why our_pid() no longer finds the server: gone, or running as something else."""
        pid = self.recorded_pid()
        if pid is None:
            return f"no pid file {self.pid_file}"
        view = proc_view(pid)
        if view is None:
            return f"pid {pid} is gone"
        state, raw = view
        cmdline = raw.replace(b"\0", b" ").decode()[:200]
        return f"pid {pid} is in state {state}, command line {cmdline!r}, not {self.marker!r}"

    def port_taken(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def adopt_external(self) -> None:
        """Best-effort setup of a server that we did not start but will reuse."""

    def config_drift(self, timeout: float = 5.0) -> list[str]:
        """Settings a running server has that differ from the config its module writes
        now (a server reads its config only when it starts)."""
        return []

    def slack_drift(self) -> list[str]:
        """The running server's timer slack, if it is not what ``start`` would give it now."""
        pid = self.our_pid()
        want = self.settings.server_timer_slack_us * 1000
        have = timer_slack_ns(pid) if pid is not None else None
        if have is None or not want or have == want:  # 0: whatever the kernel gave it
            return []
        return [f"timer slack {have // 1000} us (TL_SERVER_TIMER_SLACK_US is now {want // 1000})"]

    def start(self) -> int:
        began = time.monotonic()
        self.prepare()
        self.setup_seconds = time.monotonic() - began
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as handle:
            handle.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n")
        pid = spawn(self.command(), self.log_file, cwd=self.cwd, env=self.env(), user=self.run_as,
                    timer_slack_ns=self.settings.server_timer_slack_us * 1000)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid}\n")
        return pid

    def kill(self, timeout: float = 30.0) -> int:
        """SIGKILL the server and every process below it (``host.signal_tree``: PostgreSQL's
        backends are in sessions of their own, not in the postmaster's group), as
        a crash or an out-of-memory kill would: no shutdown, nothing flushed by the server
        itself. Returns its pid when the process is gone and its port is free."""
        pid = self.our_pid()
        if pid is None:
            raise ServicesError(f"{self.name} of {self.state} is not running")
        signal_tree(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        # Until reaped, a zombie still "exists" for kill(pid, 0): PostgreSQL would then take
        # its postmaster.pid for a live server and refuse to start.
        while Path(f"/proc/{pid}").exists() or self.port_taken():
            if time.monotonic() > deadline:
                raise ServicesError(f"{self.name} (pid {pid}) still there {timeout:.0f}s after SIGKILL")
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return pid

    def stop(self) -> str:
        pid = self.our_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "external, left alone" if self.is_up(1.0) else "not running"
        began = time.monotonic()
        clean = stop_pid(pid, self.marker, self.stop_signal, self.stop_timeout)
        self.pid_file.unlink(missing_ok=True)
        took = time.monotonic() - began
        return f"stopped pid {pid} in {took:.1f}s" + ("" if clean else " (SIGKILL)")

    def log_tail(self, lines: int = 40) -> tuple[str, ...]:
        main, *more = self.log_files()
        out = [f"--- {main}", *tail(main, lines)]
        out += [f"--- more in {path}" for path in more if path.exists()]
        return tuple(out)


def stop_all(svcs: "list[Service]", labels: list[str], echo) -> None:
    """Stop ``svcs`` in parallel; echo ``<label> <what stop() did>`` for each, in order."""
    with ThreadPoolExecutor(max_workers=max(1, len(svcs))) as pool:
        for label, result in zip(labels, pool.map(lambda svc: svc.stop(), svcs)):
            echo(f"{label} {result}")


@dataclass
class LocalProcess(Service):
    """A process of ``./dev up`` (not a server of ``./dev services``): it listens on
    ``listen_host:listen_port`` and keeps everything in its own folder ``home``, which is also
    how a running one is recognised as ours (``marker``)."""

    listen_port: int = 0
    listen_host: str = "127.0.0.1"

    @property
    def host(self) -> str:
        return self.listen_host

    @property
    def port(self) -> int:
        return self.listen_port

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def home(self) -> Path:
        raise NotImplementedError

    @property
    def cwd(self) -> Path:
        return self.home

    @property
    def marker(self) -> str:
        return str(self.home)

    def data_dirs(self) -> list[Path]:
        return [self.home]
