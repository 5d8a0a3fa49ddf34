"""The service's own processes as background ``Service``s for ``./dev up`` (``localenv.stack``):
the supervised stream worker (``python -m ops.supervise``), the Post service, the query
service and the dashboard page (``python -m ops.monitoring.page``), each with its log in ``<state>/logs/`` and its pid file in ``<state>/run/``.

Each runs in a folder of its own (``<state>/processes/<name>``) with the repository on
``PYTHONPATH``: that working directory is how ``our_pid()`` tells our process from the same
command started by another checkout or by hand.
"""
from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from localenv.host import REPO
from localenv.service import LocalProcess
from localenv.worker import role_env, settings_env


@dataclass
class PythonProcess(LocalProcess):
    """``python -m <module> ...`` with the settings' environment; up when ``health_path``
    answers 200."""

    health_path: ClassVar[str] = "/healthz"
    stop_timeout: ClassVar[float] = 30.0
    start_timeout: ClassVar[float] = 90.0  # two cores shared with four servers

    @property
    def home(self) -> Path:
        return self.state / "processes" / self.name

    def env(self) -> dict[str, str]:
        settings = self.settings
        datadir = Path(settings.faust_datadir)
        if not datadir.is_absolute():  # relative to the repository, as when run from there
            settings = settings.replace(faust_datadir=str(REPO / datadir))
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return {**os.environ, **settings_env(settings), "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def check(self, timeout: float) -> None:
        try:
            with urllib.request.urlopen(f"{self.url}{self.health_path}", timeout=timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{self.health_path} answered {exc.code}: {exc.read()[:300]!r}") from None
        if status != 200:
            raise RuntimeError(f"{self.health_path} answered {status}")


@dataclass
class PostService(PythonProcess):
    name: ClassVar[str] = "post"
    listen_port: int = 8081

    def command(self) -> list[str]:
        return [str(REPO / ".venv/bin/python"), "-m", "post.service",
                "--host", self.host, "--port", str(self.port)]


@dataclass
class QueryService(PythonProcess):
    name: ClassVar[str] = "query"
    listen_port: int = 8082

    def command(self) -> list[str]:
        return [str(REPO / ".venv/bin/python"), "-m", "query.service",
                "--host", self.host, "--port", str(self.port)]


@dataclass
class StreamWorker(PythonProcess):
    """One worker process under ``ops.supervise`` (restarted, its partitions handed over at once,
    when it dies); serves ``/metrics`` on its Faust web port. In the split layout the stack runs
    one per role (``role``). SIGTERM reaches the worker through
    the supervisor, which waits for it."""

    health_path: ClassVar[str] = "/metrics"
    stop_signal: ClassVar[int] = signal.SIGTERM
    stop_timeout: ClassVar[float] = 40.0  # the worker's own grace (8 s) and its last commit
    start_timeout: ClassVar[float] = 120.0

    listen_port: int = 6066
    worker_name: str = "dev-w1"
    # The role it runs (policies/worker_layout.py): "all" in the one layout, else one of the split's.
    role: str = "all"

    @property
    def name(self) -> str:  # type: ignore[override] - one service per role: its own log, pid file, folder
        return "worker" if self.role == "all" else f"worker-{self.role}"

    def env(self) -> dict[str, str]:
        env = {**super().env(), "TL_FAUST_WEB_PORT": str(self.port)}
        env.update(role_env(env["TL_FAUST_DATADIR"], self.role))
        return env

    def prepare(self) -> None:
        super().prepare()
        Path(self.env()["TL_FAUST_DATADIR"]).mkdir(parents=True, exist_ok=True)  # Faust makes one level

    def command(self) -> list[str]:
        return [str(REPO / ".venv/bin/python"), "-m", "ops.supervise", "--name", self.worker_name, "--",
                "-l", "info", "--web-port", str(self.port), "--web-host", self.host, "--web-bind", self.host]


@dataclass
class DashboardPage(PythonProcess):
    """The dashboard page over the stack's Prometheus (``ops.monitoring.page``)."""

    name: ClassVar[str] = "dashboard"
    health_path: ClassVar[str] = "/config.json"
    listen_port: int = 9095
    prometheus_url: str = "http://127.0.0.1:9090"

    def command(self) -> list[str]:
        return [str(REPO / ".venv/bin/python"), "-m", "ops.monitoring.page", "--prometheus", self.prometheus_url,
                "--host", self.host, "--port", str(self.port)]
