"""Local Kafka, Cassandra, Redis and PostgreSQL servers for development, tests and CI.

    python -m ops.services up [--partitions N]   # start what is not running, apply schemas
    python -m ops.services status                # real checks, quick timeouts
    python -m ops.services down                  # stop the servers this module started
    python -m ops.services reset                 # down + delete their data (jars stay cached)

Real servers on 127.0.0.1, installed from ordinary package sources on first use:
Kafka 3.9 (KRaft, one combined broker+controller) and Cassandra 5.0 as JVMs on Java 17
with jars from Maven Central, Redis and PostgreSQL 15 from Debian packages. State, logs
and pid files live in the git-ignored ``.state/`` folder. A server already answering on
a port (e.g. the machine's own PostgreSQL) is reused and never stopped by ``down``.

From code: ``ensure_up(settings)`` starts whatever is not up and applies the schemas.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

from ops import schema
from ops.host import (
    JARS, LOGS, RUN, STATE, HostError, fetch_jars, find_jar, java17, log, pid_alive,
    require_binary, run, spawn, stop_pid, tail,
)
from settings import Settings, get_settings

KAFKA_VERSION = "3.9.2"
CASSANDRA_VERSION = "5.0.9"
# Kafka 3.9 logs through log4j 1: the slf4j binding its own tools declare (slf4j-reload4j
# 1.7.36) and the reload4j release its distribution ships.
KAFKA_JARS = (
    f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
    "org.slf4j:slf4j-reload4j:1.7.36",
    "ch.qos.reload4j:reload4j:1.2.25",
)
CASSANDRA_JARS = (f"org.apache.cassandra:cassandra-all:{CASSANDRA_VERSION}",)
PG_BIN = Path("/usr/lib/postgresql/15/bin")


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


# --- one class per server --------------------------------------------------------------


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

    def ready(self, timeout: float) -> None:
        """Like check(), plus any first-boot setup (PostgreSQL creates its role)."""
        self.check(timeout)

    def is_up(self, timeout: float = 3.0) -> bool:
        try:
            self.check(timeout)
            return True
        except Exception:
            return False

    def our_pid(self) -> int | None:
        """Pid of the server this module started, if it still runs."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid, self.marker) else None

    def describe_lost_pid(self) -> str:
        """Why our_pid() no longer finds the server: gone, or running as something else."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return f"no pid file {self.pid_file}"
        proc = Path(f"/proc/{pid}")
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except (OSError, IndexError):
            return f"pid {pid} is gone"
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
        """Settings a running server has that differ from the config this module writes
        now (a server reads its config only when it starts)."""
        return []

    def start(self) -> int:
        began = time.monotonic()
        self.prepare()
        self.setup_seconds = time.monotonic() - began
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as handle:
            handle.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n")
        pid = spawn(self.command(), self.log_file, cwd=self.cwd, user=self.run_as)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid}\n")
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


@dataclass
class Kafka(Service):
    name: ClassVar[str] = "kafka"
    start_timeout: ClassVar[float] = 120.0
    stop_timeout: ClassVar[float] = 60.0

    @property
    def host(self) -> str:
        return schema.kafka_address(self.settings)[0]

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
        return [f"{key}={have[key]} (ops/services.py now writes {value})"
                for key, value in want.items()
                if key in have and have[key] != value and key not in self.DRIFT_IGNORED]

    async def _broker_config(self, timeout: float) -> dict[str, str]:
        """The running broker's configuration, as it reports it (DescribeConfigs)."""
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap,
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
            bootstrap_servers=self.settings.kafka_bootstrap,
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
            "-cp", f"{self.lib}/*", "kafka.Kafka", str(self.home / "server.properties"),
        ]

    def _log_opts(self) -> list[str]:
        return [
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.logs}",
        ]

    def _cluster_id(self) -> str:
        path = self.home / "cluster-id"
        if not path.exists():
            cluster_id = "-"
            while cluster_id.startswith("-"):  # a leading '-' would read as an option
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            path.write_text(cluster_id + "\n")
        return path.read_text().strip()

    def _server_properties(self) -> str:
        host, port = self.host, self.port
        return f"""# Generated by ops/services.py: one combined KRaft broker+controller for a test box.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{port + 1}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{port + 1}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={self.state / 'kafka-data'}
num.partitions=8
default.replication.factor=1
# As in production: a topic exists because someone created it (ops.schema.create_topics for
# the service's topics, Faust's admin calls for its changelogs), never because a client
# asked for its metadata or produced to a misspelt name.
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=16
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
log.retention.hours=168
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=33554432
"""


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a Java properties text (no continuations, no escapes)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


_KAFKA_LOG4J = """# Generated by ops/services.py
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


@dataclass
class Cassandra(Service):
    name: ClassVar[str] = "cassandra"
    start_timeout: ClassVar[float] = 240.0
    stop_timeout: ClassVar[float] = 60.0

    @property
    def host(self) -> str:
        return self.settings.cassandra_hosts[0]

    @property
    def port(self) -> int:
        return self.settings.cassandra_port

    # Gossip/internode port; only needs changing to run a second instance on one box.
    internode_port: int | None = None

    @property
    def storage_port(self) -> int:
        if self.internode_port is not None:
            return self.internode_port
        return int(os.environ.get("TL_CASSANDRA_STORAGE_PORT", "7000"))

    @property
    def home(self) -> Path:
        return self.state / "cassandra"

    def log_files(self) -> list[Path]:
        return [self.log_file, self.logs / "cassandra" / "system.log"]

    @property
    def marker(self) -> str:
        return str(self.home / "conf" / "cassandra.yaml")

    def check(self, timeout: float) -> None:
        cluster = schema.cassandra_cluster(self.settings, connect_timeout=timeout)
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local", timeout=timeout).one()
            if not row or not row.release_version:
                raise RuntimeError("system.local has no release_version")
        finally:
            cluster.shutdown()

    @property
    def lib(self) -> Path:
        return JARS / "cassandra" / "lib"

    def prepare(self) -> None:
        fetch_jars("cassandra", CASSANDRA_JARS)
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "triggers", "conf"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.logs / "cassandra").mkdir(parents=True, exist_ok=True)
        (self.home / "conf" / "cassandra.yaml").write_text(self._yaml())
        (self.home / "conf" / "logback.xml").write_text(_CASSANDRA_LOGBACK)

    def command(self) -> list[str]:
        conf = self.home / "conf"
        return [
            java17(),
            "-Xms1g", "-Xmx1g", "-Xss256k",
            # from conf/jvm-server.options and conf/jvm17-server.options of Cassandra 5.0
            "-ea", "-da:net.openhft...",
            "-XX:+UseThreadPriorities", "-XX:+HeapDumpOnOutOfMemoryError",
            f"-XX:HeapDumpPath={self.home}", "-XX:+UseTLAB", "-XX:+ResizeTLAB",
            "-XX:+PerfDisableSharedMem", "-Djava.net.preferIPv4Stack=true",
            "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1",
            "-XX:G1RSetUpdatingPauseTimePercent=5", "-XX:MaxGCPauseMillis=300",
            "-XX:InitiatingHeapOccupancyPercent=70", "-XX:+ExitOnOutOfMemoryError",
            *_JPMS_FLAGS,
            "-Dio.netty.tryReflectionSetAccessible=true",
            "-Dio.netty.allocator.useCacheForAllThreads=true",
            "-Dio.netty.allocator.maxOrder=11",
            # memory measurement agent, as bin/cassandra.in.sh loads it
            f"-javaagent:{find_jar(self.lib, 'jamm')}",
            # a single seed node: nothing to wait for
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
            f"-Dcassandra.storagedir={self.home}",
            f"-Dcassandra.triggers_dir={self.home / 'triggers'}",
            f"-Dcassandra.logdir={self.logs / 'cassandra'}",
            f"-Dlogback.configurationFile=file://{conf / 'logback.xml'}",
            "-cp", f"{self.lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def _yaml(self) -> str:
        host, home = self.host, self.home
        return f"""# Generated by ops/services.py: a single-node Cassandra 5.0 for a small test box.
cluster_name: timeline-local
num_tokens: 16
allocate_tokens_for_local_replication_factor: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{host}:{self.storage_port}"
listen_address: {host}
rpc_address: {host}
storage_port: {self.storage_port}
native_transport_port: {self.port}
start_native_transport: true
data_file_directories:
  - {home / 'data'}
commitlog_directory: {home / 'commitlog'}
saved_caches_directory: {home / 'saved_caches'}
hints_directory: {home / 'hints'}
cdc_raw_directory: {home / 'cdc_raw'}
# A write is acknowledged once it is on disk. With "periodic" (fsync every 10 s) a SIGKILLed
# Cassandra replayed its commit log only up to the last sync: 6 and 22 writes it had
# acknowledged in its last ~0.1 s were gone after the restart, while the pipeline, which
# commits its Kafka offsets after Cassandra acknowledges, never wrote them again (the
# fault suite found timelines missing tweets and deletes; docs/reliability.md). "batch"
# groups concurrent writers into one fsync; measured here: no loss on two kills; plain
# inserts 780-1,070/s vs 1,020-2,070/s with "periodic", LWTs 300-350/s vs 300-360/s,
# single writes 2.8 ms vs 2.5-4.3 ms (64 and 32 in flight, two runs each, varying load).
commitlog_sync: batch
commitlog_segment_size: 32MiB
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer
# small box: few threads, small memtables, no snapshots
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_compactors: 1
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
key_cache_size: 16MiB
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
compaction_throughput: 64MiB/s
# Writes go as UNLOGGED batches (sinks/cassandra.py: up to 32 rows, about 16 KiB,
# one batch per replica set), which by design span as many partitions as rows:
# warn only above what the client sends (defaults: 10 partitions, 5 KiB), fail at
# the default 50 KiB. See docs/operations.md, "Batched Cassandra writes".
unlogged_batch_across_partitions_warn_threshold: 64
batch_size_warn_threshold: 32KiB
batch_size_fail_threshold: 50KiB
# Stage 1 claims every tweet id with a lightweight transaction (first post wins):
# Paxos v2 needs fewer round trips and less work per claim than the v1 default.
paxos_variant: v2
"""


# Cassandra 5.0 conf/jvm17-server.options, section JPMS.
_JPMS_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
            "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.lang.reflect",
            "jdk.compiler/com.sun.tools.javac",
            "java.base/java.lang",
            "java.base/java.util",
        )
    ),
]

_CASSANDRA_LOGBACK = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by ops/services.py: INFO to logs/cassandra/system.log, warnings also to stdout. -->
<configuration scan="false">
  <shutdownHook class="ch.qos.logback.core.hook.DefaultShutdownHook"/>
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.SizeAndTimeBasedRollingPolicy">
      <fileNamePattern>${cassandra.logdir}/system.log.%d{yyyy-MM-dd}.%i.zip</fileNamePattern>
      <maxFileSize>20MB</maxFileSize>
      <maxHistory>3</maxHistory>
      <totalSizeCap>100MB</totalSizeCap>
    </rollingPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>WARN</level>
    </filter>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"""


@dataclass
class Redis(Service):
    name: ClassVar[str] = "redis"
    start_timeout: ClassVar[float] = 30.0

    @property
    def host(self) -> str:
        return schema.redis_address(self.settings)[0]

    @property
    def port(self) -> int:
        return schema.redis_address(self.settings)[1]

    @property
    def marker(self) -> str:
        return str(self.state / "redis")

    def check(self, timeout: float) -> None:
        import redis

        client = redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            if not client.ping():
                raise RuntimeError("PING did not answer PONG")
        finally:
            client.close()

    def prepare(self) -> None:
        require_binary("redis-server", "redis-server")
        (self.state / "redis").mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", self.host, "--protected-mode", "yes",
            "--dir", str(self.state / "redis"), "--daemonize", "no", "--logfile", "",
            "--set-proc-title", "no",  # keep --dir in the command line: our_pid() checks it
            "--save", "", "--appendonly", "no",  # a cache: nothing to persist
        ]


@dataclass
class Postgres(Service):
    name: ClassVar[str] = "postgres"
    start_timeout: ClassVar[float] = 60.0
    stop_signal: ClassVar[int] = signal.SIGINT  # "fast" shutdown: do not wait for clients
    superuser: ClassVar[str] = "postgres"  # the system user that runs it, and its DB role

    @property
    def dsn(self) -> dict[str, str]:
        from psycopg.conninfo import conninfo_to_dict

        return {k: str(v) for k, v in conninfo_to_dict(self.settings.postgres_dsn).items()}

    @property
    def host(self) -> str:
        return self.dsn.get("host", "127.0.0.1")

    @property
    def port(self) -> int:
        return int(self.dsn.get("port", 5432))

    @property
    def run_as(self) -> str | None:
        return self.superuser if os.geteuid() == 0 else None  # postgres refuses to run as root

    @property
    def home(self) -> Path:
        """Owned by the postgres user; outside .state if that user cannot reach .state."""
        if self.run_as is None or _traversable_by_others(self.state):
            return self.state / "postgres"
        return Path("/var/lib/postgresql") / f"timeline-{_digest(self.state)}"

    @property
    def cwd(self) -> Path:
        return self.home

    @property
    def socket_dir(self) -> Path:
        """For the superuser's local connections; a socket path must stay under 108 bytes."""
        preferred = self.home / "run"
        if len(str(preferred)) < 80:
            return preferred
        return Path("/tmp") / f"timeline-pg-{_digest(self.state)}"

    def data_dirs(self) -> list[Path]:
        return [self.home, self.socket_dir]

    @property
    def marker(self) -> str:
        return str(self.home / "data")

    def check(self, timeout: float) -> None:
        import psycopg

        with psycopg.connect(
            self.settings.postgres_dsn, connect_timeout=max(1, round(timeout))
        ) as conn:
            conn.execute("SELECT 1").fetchone()

    def ready(self, timeout: float) -> None:
        try:
            self.check(timeout)
        except Exception:
            if self.our_pid() is None:
                raise
            self._bootstrap(timeout)  # first boot: create the application role/database
            self.check(timeout)

    def prepare(self) -> None:
        if not (PG_BIN / "postgres").exists():
            require_binary(str(PG_BIN / "postgres"), "postgresql")
        home, data = self.home, self.home / "data"
        for path in (home, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.run_as:
                shutil.chown(path, self.run_as, self.run_as)
        if not (data / "PG_VERSION").exists():
            shutil.rmtree(data, ignore_errors=True)
            as_user = (
                {"user": self.run_as, "group": self.run_as, "extra_groups": []}
                if self.run_as else {}
            )
            run(
                [str(PG_BIN / "initdb"), "-D", str(data), "-U", self.superuser,
                 "--auth-local=trust", "--auth-host=scram-sha-256",
                 "--encoding=UTF8", "--no-locale"],
                cwd=home, timeout=300, **as_user,
            )

    def command(self) -> list[str]:
        return [
            str(PG_BIN / "postgres"), "-D", str(self.home / "data"),
            "-c", f"listen_addresses={self.host}", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "max_connections=200", "-c", "logging_collector=off",
        ]

    def _bootstrap(self, timeout: float) -> None:
        """Create the DSN's role (with its password) and database, as the superuser."""
        import psycopg
        from psycopg import sql

        user, password = self.dsn.get("user", "timeline"), self.dsn.get("password", "")
        dbname = self.dsn.get("dbname", user)
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=self.superuser,
            dbname="postgres", autocommit=True, connect_timeout=max(1, round(timeout)),
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(user), sql.Literal(password)
                )
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(dbname), sql.Identifier(user)
                    )
                )

    def adopt_external(self) -> None:
        """The machine's own PostgreSQL: try to create our role/database through psql."""
        user = self.dsn.get("user", "timeline")
        variables = {
            "user": user, "password": self.dsn.get("password", ""),
            "dbname": self.dsn.get("dbname", user),
        }
        psql = shutil.which("psql") or str(PG_BIN / "psql")
        argv = ["runuser", "-u", self.superuser, "--", psql, "-X", "-q", "-p", str(self.port),
                "-v", "ON_ERROR_STOP=1", "-f", "-"]
        for key, value in variables.items():
            argv[-2:-2] = ["-v", f"{key}={value}"]
        try:
            subprocess.run(argv, input=_PSQL_BOOTSTRAP, capture_output=True, text=True,
                           timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass


_PSQL_BOOTSTRAP = r"""
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'user', :'password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'dbname', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname')\gexec
"""


def _digest(path: Path) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()[:8]


def _traversable_by_others(path: Path) -> bool:
    """Whether another user (postgres) can reach ``path``: o+x on every existing parent."""
    for part in [path, *path.parents]:
        if part.exists() and not part.stat().st_mode & stat.S_IXOTH:
            return False
    return True


SERVICE_TYPES: tuple[type[Service], ...] = (Cassandra, Kafka, Postgres, Redis)


def services(settings: Settings | None = None) -> list[Service]:
    """Cassandra first: it is the slowest to boot, so it starts while the others install."""
    settings = settings or get_settings()
    return [cls(settings) for cls in SERVICE_TYPES]


# --- orchestration -----------------------------------------------------------------------


def _start_or_reuse(svc: Service) -> Outcome | float:
    """Start ``svc`` unless it is already up. Returns a final Outcome, or the monotonic
    time the server was (or is being) started, for _wait to finish."""
    if svc.is_up():
        owner = "" if svc.our_pid() else ", not started by us"
        return Outcome(svc.name, svc.address, True, f"already running{owner}")
    if svc.our_pid() is not None:
        return time.monotonic()  # ours, still booting (e.g. an earlier `up` timed out)
    if svc.port_taken():
        svc.adopt_external()
        if svc.is_up(5.0):
            return Outcome(svc.name, svc.address, True, "already running, not started by us")
        return Outcome(svc.name, svc.address, False,
                       f"port {svc.port} is taken by a process that does not answer as {svc.name}")
    began = time.monotonic()
    try:
        svc.start()
    except Exception as exc:  # noqa: BLE001 - reported, with the log, as a failed service
        return Outcome(svc.name, svc.address, False, f"could not start: {exc}", svc.log_tail())
    return began


def _wait(svc: Service, began: float) -> Outcome:
    deadline = began + svc.start_timeout
    last_error: Exception | None = None
    retried = False
    while time.monotonic() < deadline:
        try:
            svc.ready(timeout=5.0)
            took = time.monotonic() - began
            setup = f", setup {svc.setup_seconds:.1f}s" if svc.setup_seconds >= 0.5 else ""
            again = " on the second attempt" if retried else ""
            return Outcome(svc.name, svc.address, True, f"started in {took:.1f}s{setup}{again}")
        except Exception as exc:  # noqa: BLE001 - not up yet
            last_error = exc
        if svc.our_pid() is None:
            gone = f"process exited during start-up ({svc.describe_lost_pid()})"
            if retried:
                return Outcome(svc.name, svc.address, False, gone, svc.log_tail())
            retried = True  # once: a server can lose a race for its port or a file
            logging.getLogger(__name__).warning("%s: %s; starting it again", svc.name, gone)
            time.sleep(1.0)
            try:
                svc.start()
            except Exception as exc:  # noqa: BLE001 - reported with the log
                return Outcome(svc.name, svc.address, False,
                               f"{gone}; could not start again: {exc}", svc.log_tail())
            deadline = time.monotonic() + svc.start_timeout
            continue
        time.sleep(0.25)
    return Outcome(svc.name, svc.address, False,
                   f"not answering after {svc.start_timeout:.0f}s: {last_error}", svc.log_tail())


def start_all(settings: Settings, svcs: list[Service] | None = None) -> list[Outcome]:
    """Start every server that is not up; wait for each one in parallel from its start."""
    outcomes: dict[str, Outcome | Future[Outcome]] = {}
    with ThreadPoolExecutor(max_workers=len(SERVICE_TYPES)) as pool:
        for svc in svcs or services(settings):
            result = _start_or_reuse(svc)
            outcomes[svc.name] = (
                result if isinstance(result, Outcome) else pool.submit(_wait, svc, result)
            )
        return [
            o.result() if isinstance(o, Future) else o
            for o in (outcomes[cls.name] for cls in SERVICE_TYPES)
        ]


def apply_schemas(settings: Settings, partitions: int | None = None, echo=print) -> None:
    """Cassandra tables, PostgreSQL tables and Kafka topics; one line per step."""
    began = time.monotonic()
    count = schema.apply_cassandra(settings)
    echo(f"{'schema':<10} ok    cassandra keyspace {settings.cassandra_keyspace}: "
         f"{count} statements ({time.monotonic() - began:.1f}s)")
    began = time.monotonic()
    schema.apply_postgres(settings)
    echo(f"{'schema':<10} ok    postgres ops/schema.sql ({time.monotonic() - began:.1f}s)")
    began = time.monotonic()
    topics = schema.create_topics(settings, partitions)
    summary = ", ".join(f"{name} {state}" for name, state in topics.items())
    echo(f"{'topics':<10} ok    {summary} ({time.monotonic() - began:.1f}s)")


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _failure_report(failed: list[Outcome]) -> str:
    parts = []
    for outcome in failed:
        parts.append(f"{outcome.name}: {outcome.detail}")
        if outcome.log_tail:
            parts.append(f"last lines of the {outcome.name} log:")
            parts.extend("    " + line for line in outcome.log_tail)
    return "\n".join(parts)


def drift_warnings(settings: Settings, outcomes: list[Outcome]) -> list[str]:
    """One line per server that was already running with another config than the one
    ``up`` would start it with; ``up`` does not restart a server others may be using."""
    lines = []
    for svc in services(settings):
        outcome = next(o for o in outcomes if o.name == svc.name)
        if not outcome.up or not outcome.detail.startswith("already running"):
            continue
        try:
            drift = svc.config_drift()
        except Exception as exc:  # noqa: BLE001 - a warning that could not be computed
            lines.append(f"{svc.name:<10} ?     could not compare its config: {exc!r}")
            continue
        if drift:
            remedy = ("restart it: ./dev services down && ./dev services up" if svc.our_pid()
                      else "it was not started by ops/services.py: change its config by hand")
            lines.append(f"{svc.name:<10} STALE {svc.address:<15}  running with {'; '.join(drift)}; "
                         f"{remedy}")
    return lines


def up(settings: Settings | None = None, partitions: int | None = None,
       echo=print) -> list[Outcome]:
    """Start what is not running, wait for it, apply the schemas. Raises ServicesError."""
    settings = settings or get_settings()
    began = time.monotonic()
    with _exclusive(RUN / "up.lock"):  # one `up` at a time (pytest-xdist workers, two shells)
        outcomes = start_all(settings)
        for outcome in outcomes:
            echo(outcome.line())
        for line in drift_warnings(settings, outcomes):
            echo(line)
        failed = [o for o in outcomes if not o.up]
        if failed:
            raise ServicesError(_failure_report(failed))
        apply_schemas(settings, partitions, echo)
    echo(f"all up in {time.monotonic() - began:.1f}s (state in {STATE})")
    return outcomes


def ensure_up(settings: Settings | None = None, partitions: int | None = None) -> None:
    """For code and tests: make sure every server answers and the schemas exist."""
    up(settings, partitions, echo=lambda line: log(line))


def status(settings: Settings | None = None) -> list[Outcome]:
    svcs = services(settings)

    def one(svc: Service) -> Outcome:
        pid = svc.our_pid()
        owner = f"pid {pid}" if pid else "not started by us"
        if svc.is_up(3.0):
            return Outcome(svc.name, svc.address, True, owner)
        return Outcome(svc.name, svc.address, False,
                       f"process {pid} runs but does not answer" if pid else "not running")

    with ThreadPoolExecutor(max_workers=len(svcs)) as pool:
        return list(pool.map(one, svcs))


def down(settings: Settings | None = None, echo=print) -> None:
    """Stop the servers this module started (in parallel); leave external ones alone."""
    svcs = services(settings)
    with ThreadPoolExecutor(max_workers=len(svcs)) as pool:
        for svc, result in zip(svcs, pool.map(lambda s: s.stop(), svcs)):
            echo(f"{svc.name:<10} {result}")


def reset(settings: Settings | None = None, echo=print) -> None:
    """down, then delete the servers' data, logs and pid files; downloaded jars stay."""
    down(settings, echo)
    settings = settings or get_settings()
    doomed = {path for svc in services(settings) for path in svc.data_dirs()}
    doomed |= {LOGS, RUN}
    faust = Path(settings.faust_datadir).resolve()  # local tables derived from Kafka's topics
    if faust.is_relative_to(STATE):
        doomed.add(faust)
    for path in sorted(doomed):
        if path.exists():
            shutil.rmtree(path)
            echo(f"{'reset':<10} removed {path}")


# --- a private set of servers -------------------------------------------------------------


class ServerSet:
    """The four servers in a folder of their own, on ports of their own.

    For tests that kill, pause or restart servers (``ops.faults``) without touching the
    shared ones ``./dev services up`` runs on the default ports, and for several instances
    on one machine. Ports from ``base_port``: Kafka +0 (its KRaft controller +1), Cassandra
    +2 (internode +3), Redis +4, PostgreSQL +5. ``settings`` are the base settings with these
    servers' addresses (topics, keyspace and the rest stay the caller's business)::

        servers = ServerSet(STATE / "faults", ServerSet.free_base_port())
        servers.up()                           # start what is not running, wait for each
        servers.kill("redis"); servers.start("redis")   # SIGKILL (process group), restart
        servers.pause("kafka"); servers.resume("kafka") # SIGSTOP / SIGCONT
        servers.down()                         # or reset(): down, then delete the folder
    """

    OFFSETS: ClassVar[dict[str, int]] = {
        "kafka": 0, "kafka-controller": 1, "cassandra": 2, "cassandra-internode": 3,
        "redis": 4, "postgres": 5,
    }
    SPAN: ClassVar[int] = 6

    def __init__(self, state_dir: Path, base_port: int, settings: Settings | None = None,
                 host: str = "127.0.0.1") -> None:
        self.state = Path(state_dir).resolve()
        self.base_port = base_port
        self.host = host
        base = settings or get_settings()
        self.settings = self.with_servers(base)
        self._services: dict[str, Service] = {
            svc.name: svc for svc in (
                Cassandra(self.settings, state=self.state, internode_port=base_port + 3),
                Kafka(self.settings, state=self.state),
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
        with _exclusive(self.state / "run" / "up.lock"):
            for svc in self.services():
                if svc.our_pid() is None and svc.port_taken():
                    raise ServicesError(f"{svc.name}: port {svc.port} is taken by a process this "
                                        f"server set ({self.state}) did not start")
            outcomes = start_all(self.settings, self.services())
            for outcome in outcomes:
                echo(outcome.line())
            failed = [o for o in outcomes if not o.up]
            if failed:
                raise ServicesError(_failure_report(failed))
        echo(f"server set {self.state} on ports {self.base_port}..{self.base_port + self.SPAN - 1}"
             f" up in {time.monotonic() - began:.1f}s")
        return outcomes

    def pid(self, name: str) -> int | None:
        return self._services[name].our_pid()

    def signal(self, name: str, sig: int) -> int:
        """Send ``sig`` to the server's process group (PostgreSQL: the postmaster and its
        backends; the others are one process); returns the pid."""
        pid = self.pid(name)
        if pid is None:
            raise ServicesError(f"{name} of {self.state} is not running")
        os.killpg(pid, sig)
        return pid

    def kill(self, name: str, timeout: float = 30.0) -> int:
        """SIGKILL, as a crash or an out-of-memory kill would: no shutdown, nothing flushed
        by the server itself. Returns when the process is gone and its port is free."""
        svc = self._services[name]
        pid = self.signal(name, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        # Until reaped, a zombie still "exists" for kill(pid, 0): PostgreSQL would then take
        # its postmaster.pid for a live server and refuse to start.
        while Path(f"/proc/{pid}").exists() or svc.port_taken():
            if time.monotonic() > deadline:
                raise ServicesError(f"{name} (pid {pid}) still there {timeout:.0f}s after SIGKILL")
            time.sleep(0.05)
        svc.pid_file.unlink(missing_ok=True)
        return pid

    def pause(self, name: str) -> int:
        return self.signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> int:
        return self.signal(name, signal.SIGCONT)

    def start(self, name: str) -> Outcome:
        """Start one server (e.g. after ``kill``) and wait until it answers."""
        svc = self._services[name]
        result = _start_or_reuse(svc)
        outcome = result if isinstance(result, Outcome) else _wait(svc, result)
        if not outcome.up:
            raise ServicesError(_failure_report([outcome]))
        return outcome

    def down(self, echo=log) -> None:
        """Stop (SIGCONT first, in case one is paused) every server of the set."""
        svcs = self.services()
        for svc in svcs:
            pid = svc.our_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGCONT)
        with ThreadPoolExecutor(max_workers=len(svcs)) as pool:
            for svc, result in zip(svcs, pool.map(lambda s: s.stop(), svcs)):
                echo(f"{svc.name:<10} {result}")

    def reset(self, echo=log) -> None:
        """down, then delete everything the set keeps (its folder, PostgreSQL's data)."""
        self.down(echo)
        for path in sorted({p for svc in self.services() for p in svc.data_dirs()} | {self.state}):
            if path.exists():
                shutil.rmtree(path)
                echo(f"{'reset':<10} removed {path}")


# --- command line -------------------------------------------------------------------------


def _quiet_client_logs() -> None:
    """Checks poll servers that are still booting: the drivers' retry noise is expected."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("cassandra", "aiokafka", "kafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "reset"])
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of the topics created by `up` "
                             "(default: TL_TOPIC_PARTITIONS, 64)")
    args = parser.parse_args(argv)
    if args.partitions is not None and args.partitions < 1:
        parser.error("--partitions must be >= 1")
    _quiet_client_logs()
    settings = get_settings()
    try:
        if args.command == "up":
            up(settings, args.partitions)
        elif args.command == "status":
            outcomes = status(settings)
            for outcome in outcomes:
                print(outcome.line())
            return 0 if all(o.up for o in outcomes) else 1
        elif args.command == "down":
            down(settings)
        else:
            reset(settings)
    except (ServicesError, HostError) as exc:
        print(f"\nFAILED\n{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
