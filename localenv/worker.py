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
from typing import IO

from localenv.host import terminate
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


class Worker:
    """One ``faust -A faust_app worker`` process."""

    def __init__(self, settings: Settings, log_path: Path, *, web_port: int | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.web_port = web_port or free_port()
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def launcher(self) -> list[str]:
        """What runs ``faust``'s command line: the ``faust`` module itself."""
        return ["-m", "faust"]

    def start(self) -> "Worker":
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        env["TL_FAUST_WEB_PORT"] = str(self.web_port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.launcher(), "-A", "faust_app", "worker",
             "-l", os.environ.get("TL_WORKER_LOG_LEVEL", "warn"),
             "--web-port", str(self.web_port), "--web-host", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise with the log's tail if the worker has exited."""
        if not self.alive():
            raise RuntimeError(f"worker exited with {self.proc and self.proc.returncode}:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit (a crash)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_log()

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            terminate(self.proc, timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

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
