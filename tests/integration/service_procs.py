"""The Post service and the query service as real processes (``python -m post.service``,
``python -m query.service``) on free ports, in an isolated namespace's settings: what the
fuzz test (``test_api_fuzz.py``) and the log test (``test_json_logs.py``) talk to."""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from localenv.host import terminate
from localenv.worker import free_port, settings_env, wait_for
from settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class ServiceProc:
    def __init__(self, module: str, settings: Settings, log_path: Path, log_level: str = "warning") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(self.port), "--log-level", log_level],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        terminate(self.proc, 10.0)
        self._log.close()


@contextmanager
def running(module: str, settings: Settings, log_path: Path, log_level: str = "warning") -> Iterator[ServiceProc]:
    svc = ServiceProc(module, settings, log_path, log_level)
    try:
        if not wait_for(svc.healthy, timeout=60):
            raise AssertionError(f"{module} did not become healthy:\n" + "\n".join(svc.log_lines()[-40:]))
        yield svc
    finally:
        svc.stop()
