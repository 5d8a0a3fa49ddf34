"""Run the Faust worker as a child process with a given Settings (tests, demo, benchmarks)."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Mapping

from localenv.host import terminate
from policies.worker_layout import LAYOUTS
from settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in another process."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "1" if value else "0"
        env[f.metadata["env"]] = str(value)
    return env


def env_file_text(settings: Settings) -> str:
    """An environment file of ``settings``: the ``TL_X=value`` lines that differ from the defaults."""
    defaults = settings_env(Settings())
    return "".join(f"{k}={v}\n" for k, v in sorted(settings_env(settings).items()) if defaults.get(k) != v)


def role_env(datadir: str, role: str) -> dict[str, str]:
    """The environment of a worker process that runs ``role`` (``policies/worker_layout.py``):
    nothing for the one layout's ``all``; else the role, and a folder of its own under
    ``datadir`` for its tables (two processes may not share a RocksDB folder)."""
    if role == "all":
        return {}
    return {"TL_WORKER_ROLE": role, "TL_FAUST_DATADIR": os.path.join(datadir, role)}


class Worker:
    """A worker: one ``faust -A faust_app worker`` process per role of the settings' layout
    (``policies/worker_layout.py``): one process in the ``one`` layout, a ``fanout`` and a
    ``deliver`` process in ``split``. They start, stop and crash together (a host's worker);
    ``proc`` is the first, ``procs`` all of them (role -> process)."""

    def __init__(self, settings: Settings, log_path: Path, *, web_port: int | None = None,
                 role_ports: Mapping[str, int] | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.procs: dict[str, subprocess.Popen] = {}
        self.web_ports: dict[str, int] = {}  # role -> its faust web server's port (GET /metrics)
        # Ports by role, e.g. an earlier start's ``web_ports`` (a static member restarted must
        # come back with its old URL: Faust checks it against its old assignment).
        self.role_ports = dict(role_ports or {})
        self.web_port = web_port or self.role_ports.get(LAYOUTS[settings.worker_layout][0]) or free_port()
        self._logs: list[IO[bytes]] = []

    @property
    def proc(self) -> subprocess.Popen | None:
        return next(iter(self.procs.values()), None)

    def launcher(self) -> list[str]:
        """What runs ``faust``'s command line: the ``faust`` module itself."""
        return ["-m", "faust"]

    def log_of(self, role: str) -> Path:
        """The first role logs to ``log_path``, the others beside it (``worker-deliver.log``)."""
        first = LAYOUTS[self.settings.worker_layout][0]
        return self.log_path if role == first else self.log_path.with_name(f"{self.log_path.stem}-{role}{self.log_path.suffix}")

    def start(self) -> "Worker":
        roles = LAYOUTS[self.settings.worker_layout]
        for role in roles:
            self.web_ports[role] = self.web_port if role == roles[0] else self.role_ports.get(role) or free_port()
            self.procs[role] = self._spawn(role, self.web_ports[role])
        return self

    def _spawn(self, role: str, web_port: int) -> subprocess.Popen:
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        env["TL_FAUST_WEB_PORT"] = str(web_port)
        env.update(role_env(self.settings.faust_datadir, role))
        if role != "all":
            os.makedirs(self.settings.faust_datadir, exist_ok=True)
        log_path = self.log_of(role)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        self._logs.append(log)
        return subprocess.Popen(
            [sys.executable, *self.launcher(), "-A", "faust_app", "worker",
             "-l", os.environ.get("TL_WORKER_LOG_LEVEL", "warn"),
             "--web-port", str(web_port), "--web-host", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def alive(self) -> bool:
        """Every process of the worker runs."""
        return bool(self.procs) and all(p.poll() is None for p in self.procs.values())

    def check(self) -> None:
        """Raise with the log's tail if a process of the worker has exited."""
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"worker ({role}) exited with {proc.returncode}:\n{tail(self.log_of(role), 60)}")
        if not self.procs:
            raise RuntimeError("worker not started")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit (a crash)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        self._close_log()

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                terminate(proc, timeout)
        self._close_log()

    def _close_log(self) -> None:
        for log in self._logs:
            log.close()
        self._logs.clear()

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file, or ``(no log)``."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False
