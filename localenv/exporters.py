"""The servers' own health as Prometheus metrics, from maintained exporters in Debian's
packages: ``prometheus-redis-exporter`` (memory, evictions, connections: ``redis_*``) and
``prometheus-postgres-exporter`` (connections: ``pg_stat_activity_count``, ``pg_*``).
Kafka and Cassandra export theirs through the JMX exporter agent in their own JVM
(``localenv.jmx_exporter``).

Each exporter runs in a folder of its own under the state folder (``exporters/<name>``):
that working directory is how ``our_pid()`` recognises it (their command lines name no
path of ours).
"""
from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from localenv.host import require_binary
from localenv.service import LocalProcess
from ops import schema


@dataclass
class Exporter(LocalProcess):
    """A process serving ``GET /metrics`` about one server; up when it reports the server up."""

    binary: ClassVar[str]
    package: ClassVar[str]
    up_metric: ClassVar[str]  # "<name> 1" in /metrics once the exporter reaches its server
    stop_timeout: ClassVar[float] = 10.0
    start_timeout: ClassVar[float] = 30.0

    @property
    def home(self) -> Path:
        return self.state / "exporters" / self.name

    def prepare(self) -> None:
        require_binary(self.binary, self.package)
        self.home.mkdir(parents=True, exist_ok=True)

    def metrics(self, timeout: float) -> str:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=timeout) as resp:
            return resp.read().decode()

    def check(self, timeout: float) -> None:
        text = self.metrics(timeout)
        if f"\n{self.up_metric} 1" not in f"\n{text}":
            raise RuntimeError(f"{self.address}/metrics does not say {self.up_metric} 1")


@dataclass
class RedisExporter(Exporter):
    name: ClassVar[str] = "redis-exporter"
    binary: ClassVar[str] = "prometheus-redis-exporter"
    package: ClassVar[str] = "prometheus-redis-exporter"
    up_metric: ClassVar[str] = "redis_up"

    listen_port: int = int(os.environ.get("TL_REDIS_EXPORTER_PORT", "9121"))

    def command(self) -> list[str]:
        host, port = schema.redis_address(self.settings)
        return [require_binary(self.binary, self.package),
                "-redis.addr", f"redis://{host}:{port}",
                "-web.listen-address", self.address]


@dataclass
class PostgresExporter(Exporter):
    name: ClassVar[str] = "postgres-exporter"
    binary: ClassVar[str] = "prometheus-postgres-exporter"
    package: ClassVar[str] = "prometheus-postgres-exporter"
    up_metric: ClassVar[str] = "pg_up"

    listen_port: int = int(os.environ.get("TL_POSTGRES_EXPORTER_PORT", "9187"))

    def env(self) -> dict[str, str]:
        dsn = self.settings.postgres_dsn
        dsn += ("&" if "?" in dsn else "?") + "sslmode=disable"
        return {**os.environ, "DATA_SOURCE_NAME": dsn}

    def command(self) -> list[str]:
        return [require_binary(self.binary, self.package),
                f"--web.listen-address={self.address}",
                "--no-collector.bgwriter",  # the connections are what the dashboard shows
                "--log.level=warn"]
