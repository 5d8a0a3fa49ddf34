"""Kafka 3.9 as a local server: one combined KRaft broker+controller on Java 17, jars from
Maven Central, its ``server.properties`` and log4j configuration."""
from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from localenv.host import JARS, fetch_jars, java17, run
from localenv.jmx_exporter import KAFKA_RULES, agent_option
from localenv.service import Service
from ops import schema

KAFKA_VERSION = "3.9.2"
# Kafka 3.9 logs through log4j 1: the slf4j binding its own tools declare (slf4j-reload4j
# 1.7.36) and the reload4j release its distribution ships.
KAFKA_JARS = (
    f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
    "org.slf4j:slf4j-reload4j:1.7.36",
    "ch.qos.reload4j:reload4j:1.2.25",
)


@dataclass
class Kafka(Service):
    name: ClassVar[str] = "kafka"
    start_timeout: ClassVar[float] = 120.0
    stop_timeout: ClassVar[float] = 60.0

    # Where the JMX exporter agent serves /metrics (localenv/jmx_exporter.py).
    metrics_port: int | None = None

    @property
    def host(self) -> str:
        return schema.kafka_address(self.settings)[0]

    @property
    def agent_port(self) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return int(os.environ.get("TL_KAFKA_METRICS_PORT", "7071"))

    @property
    def port(self) -> int:
        return schema.kafka_address(self.settings)[1]

    @property
    def home(self) -> Path:
        return self.state / "kafka"

    def data_dirs(self) -> list[Path]:
        return [self.home, self.state / "kafka-data"]

    @property
    def marker(self) -> str:
        return str(self.home / "server.properties")

    def check(self, timeout: float) -> None:
        schema.run_sync(self._check(timeout))

    # Where the broker keeps its data differs between checkouts that share one broker; it
    # is not a behaviour the tests or the service depend on.
    DRIFT_IGNORED = frozenset({"log.dirs"})

    def config_drift(self, timeout: float = 5.0) -> list[str]:
        want = parse_properties(self._server_properties())
        have = schema.run_sync(self._broker_config(timeout))
        return [f"{key}={have[key]} (localenv/kafka_server.py now writes {value})"
                for key, value in want.items()
                if key in have and have[key] != value and key not in self.DRIFT_IGNORED]

    async def _broker_config(self, timeout: float) -> dict[str, str]:
        """The running broker's configuration, as it reports it (DescribeConfigs)."""
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        admin = AIOKafkaAdminClient(**self.settings.kafka_kwargs(),
                                    request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            node = str(cluster["brokers"][0]["node_id"])
            (response,) = await asyncio.wait_for(
                admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, node)]), timeout)
        finally:
            await admin.close()
        (resource,) = response.resources
        entries = resource[4]
        return {name: value for name, value, *_ in entries if value is not None}

    async def _check(self, timeout: float) -> None:
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            **self.settings.kafka_kwargs(),
            request_timeout_ms=int(timeout * 1000),
        )
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
        finally:
            await admin.close()
        if not cluster.get("brokers"):
            raise RuntimeError("no brokers in metadata")

    @property
    def lib(self) -> Path:
        return JARS / "kafka" / "lib"

    def prepare(self) -> None:
        fetch_jars("kafka", KAFKA_JARS)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.state / "kafka-data").mkdir(parents=True, exist_ok=True)
        (self.home / "server.properties").write_text(self._server_properties())
        (self.home / "log4j.properties").write_text(_KAFKA_LOG4J)
        (self.home / "jmx-exporter.yml").write_text(KAFKA_RULES)
        if not (self.state / "kafka-data" / "meta.properties").exists():
            run(
                [java17(), "-Xmx256m", *self._log_opts(), "-cp", f"{self.lib}/*",
                 "kafka.tools.StorageTool", "format", "--ignore-formatted",
                 "-t", self._cluster_id(), "-c", str(self.home / "server.properties")],
                timeout=300,
            )

    def command(self) -> list[str]:
        return [
            java17(), "-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true", *self._log_opts(),
            agent_option(self.host, self.agent_port, self.home / "jmx-exporter.yml"),
            "-cp", f"{self.lib}/*", "kafka.Kafka", str(self.home / "server.properties"),
        ]

    def _log_opts(self) -> list[str]:
        return [
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.logs}",
        ]

    def _cluster_id(self) -> str:
        return cluster_id(self.home / "cluster-id")

    def _server_properties(self) -> str:
        host, port = self.host, self.port
        return f"""# Generated by localenv/kafka_server.py: one combined KRaft broker+controller for a test box.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{port + 1}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{port + 1}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
""" + log_properties(self.state / "kafka-data", replication=1)


def log_properties(data: Path, replication: int, io_threads: int = 4, dedupe_buffer: int = 32 << 20) -> str:
    """The topic and log defaults of a broker, alone (``replication=1``) or in a cluster:
    ``replication`` copies of every topic, the internal ones too, with a majority of them in
    sync for an ``acks=all`` write (``ops.schema.min_insync_replicas``)."""
    min_isr = schema.min_insync_replicas(replication)
    return f"""log.dirs={data}
num.partitions=8
default.replication.factor={replication}
min.insync.replicas={min_isr}
# As in production: a topic exists because someone created it (ops.schema.create_topics for
# the service's topics, Faust's admin calls for its changelogs), never because a client
# asked for its metadata or produced to a misspelt name.
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=16
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
log.retention.hours=168
num.network.threads=2
num.io.threads={io_threads}
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size={dedupe_buffer}
"""


def cluster_id(path: Path) -> str:
    """The KRaft cluster id kept in ``path`` (a new random one the first time)."""
    if not path.exists():
        new = "-"
        while new.startswith("-"):  # a leading '-' would read as an option
            new = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new + "\n")
    return path.read_text().strip()


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a Java properties text (no continuations, no escapes)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


_KAFKA_LOG4J = """# Generated by localenv/kafka_server.py
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
# one line per partition and segment otherwise
log4j.logger.kafka.log=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.kafka.cluster.Partition=WARN
log4j.logger.org.apache.kafka.controller.ReplicationControlManager=WARN
"""
