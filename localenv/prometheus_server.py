"""Prometheus as a local server, from Debian's package ``prometheus``: it scrapes the
processes it is given and evaluates the alert rules of ``ops/monitoring/alerts.yml``.

    prom = Prometheus(settings, state=STATE, listen_port=9090,
                      targets={"timeline-query": ["127.0.0.1:8082"], "redis": ["127.0.0.1:9121"]})
    start_or_reuse(prom) ... (or ServerSet-style: prom.start(); wait_ready(prom, began))
    prom.set_targets({...})        # rewrite the config; a running one reloads it
    prom.query("up")               # the HTTP API: instant query -> list of samples
    prom.active_targets()          # job, instance, health of every scraped target
    prom.stop()

``./dev up`` (``localenv.stack``) runs one on 127.0.0.1:9090 (``TL_PROMETHEUS_PORT``) with a
scrape job per process it started; tests start their own on a free port and folder.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from localenv.host import require_binary
from localenv.service import LocalProcess
from ops.monitoring.scrape import prometheus_config

DEFAULT_PORT = int(os.environ.get("TL_PROMETHEUS_PORT", "9090"))


@dataclass
class Prometheus(LocalProcess):
    name: ClassVar[str] = "prometheus"
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 20.0

    listen_port: int = DEFAULT_PORT
    targets: dict[str, list[str]] = field(default_factory=dict)  # job -> host:port
    interval_s: int = 5
    retention: str = "2d"  # a local run: enough for a day of watching, small on disk

    @property
    def home(self) -> Path:
        return self.state / "prometheus"

    @property
    def config_file(self) -> Path:
        return self.home / "prometheus.yml"

    @property
    def marker(self) -> str:
        return str(self.config_file)

    def check(self, timeout: float) -> None:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=timeout) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/-/ready answered {resp.status}")

    def prepare(self) -> None:
        require_binary("prometheus", "prometheus")
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        self.write_config()

    def write_config(self) -> bool:
        """Write the configuration for ``targets``; True if it changed."""
        text = prometheus_config(self.targets, interval_s=self.interval_s)
        self.home.mkdir(parents=True, exist_ok=True)
        if self.config_file.exists() and self.config_file.read_text() == text:
            return False
        self.config_file.write_text(text)
        return True

    def set_targets(self, targets: dict[str, list[str]], timeout: float = 10.0) -> None:
        """New scrape targets: the config is rewritten and a running Prometheus of ours reloads
        it (``--web.enable-lifecycle``), so a reused one scrapes what runs now."""
        self.targets = {job: list(addrs) for job, addrs in targets.items()}
        if self.write_config() and self.our_pid() is not None:
            request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
            with urllib.request.urlopen(request, timeout=timeout):
                pass

    def command(self) -> list[str]:
        return [
            require_binary("prometheus", "prometheus"),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.home / 'data'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",  # POST /-/reload after set_targets()
            "--log.level=warn",
        ]

    # -- the HTTP API (https://prometheus.io/docs/prometheus/latest/querying/api/)
    def api(self, path: str, timeout: float = 10.0, **params: Any) -> Any:
        """GET ``/api/v1/<path>``; returns the ``data`` of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry the error in the body
            body = json.load(exc)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus /api/v1/{path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """An instant query: ``[{"metric": {labels}, "value": [ts, "value"]}, ...]``."""
        return self.api("query", timeout, query=expr)["result"]

    def active_targets(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """``[{"job", "instance", "health" ("up", "down", "unknown"), "lastError"}, ...]``."""
        return [
            {"job": t["labels"].get("job"), "instance": t["labels"].get("instance"),
             "health": t.get("health"), "lastError": t.get("lastError", "")}
            for t in self.api("targets", timeout, state="active")["activeTargets"]
        ]
