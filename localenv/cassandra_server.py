"""Cassandra 5.0 as a local server: a single node on Java 17, jars from Maven Central, its
``cassandra.yaml``, the JVM flags of its own ``conf/jvm*-server.options`` and its logback
configuration."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from localenv.host import JARS, fetch_jars, find_jar, java17
from localenv.jmx_exporter import CASSANDRA_RULES, agent_option
from localenv.service import Service
from ops import schema

CASSANDRA_VERSION = "5.0.9"
CASSANDRA_JARS = (f"org.apache.cassandra:cassandra-all:{CASSANDRA_VERSION}",)


COMMITLOG_SYNC_MODES = ("batch", "group", "periodic")


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

    # Where the JMX exporter agent serves /metrics (localenv/jmx_exporter.py).
    metrics_port: int | None = None
    heap: str = "2g"

    # The topology: one node of its own (a ring's nodes, localenv/cassandra_ring.py, change these).
    cluster_name: ClassVar[str] = "timeline-local"
    num_tokens: ClassVar[int] = 16
    snitch: ClassVar[str] = "SimpleSnitch"

    @property
    def seeds(self) -> str:
        return f"{self.host}:{self.storage_port}"

    @property
    def token_replication(self) -> int:
        """allocate_tokens_for_local_replication_factor: tokens spread for this many replicas."""
        return 1

    def topology_flags(self) -> list[str]:
        # a single seed node: nothing to wait for
        return ["-Dcassandra.skip_wait_for_gossip_to_settle=0", "-Dcassandra.ring_delay_ms=1000"]

    @property
    def agent_port(self) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return int(os.environ.get("TL_CASSANDRA_METRICS_PORT", "7072"))

    @property
    def home(self) -> Path:
        return self.state / "cassandra"

    @property
    def commitlog_sync(self) -> str:
        mode = self.settings.cassandra_commitlog_sync
        if mode not in COMMITLOG_SYNC_MODES:
            raise ValueError(f"TL_CASSANDRA_COMMITLOG_SYNC={mode!r}: use one of {', '.join(COMMITLOG_SYNC_MODES)}")
        return mode

    @property
    def commitlog_period(self) -> str:
        if self.commitlog_sync == "periodic":
            return f"commitlog_sync_period: {self.settings.cassandra_commitlog_period_ms}ms\n"
        if self.commitlog_sync == "group":
            return f"commitlog_sync_group_window: {self.settings.cassandra_commitlog_group_window_ms}ms\n"
        return ""

    def log_files(self) -> list[Path]:
        return [self.log_file, self.logs / "cassandra" / "system.log"]

    @property
    def marker(self) -> str:
        return str(self.home / "conf" / "cassandra.yaml")

    def check(self, timeout: float) -> None:
        cluster = schema.cassandra_cluster(self.settings, connect_timeout=timeout)
        try:
            session = cluster.connect()
            # asked of this node itself, not of a peer the driver found (a ring)
            names = {self.host, socket.gethostbyname(self.host)}
            host = next((h for h in cluster.metadata.all_hosts()
                         if h.endpoint.address in names and h.endpoint.port == self.port), None)
            if host is None:
                raise RuntimeError(f"{self.address} is not among the hosts the driver found")
            row = session.execute("SELECT release_version FROM system.local", timeout=timeout, host=host).one()
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
        (self.home / "conf" / "jmx-exporter.yml").write_text(CASSANDRA_RULES)

    def command(self) -> list[str]:
        conf = self.home / "conf"
        return [
            java17(),
            f"-Xms{self.heap}", f"-Xmx{self.heap}", "-Xss256k",
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
            agent_option(self.host, self.agent_port, conf / "jmx-exporter.yml"),
            *self.topology_flags(),
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
        return f"""# Generated by localenv/cassandra_server.py: a Cassandra 5.0 node for a small test box.
cluster_name: {self.cluster_name}
num_tokens: {self.num_tokens}
allocate_tokens_for_local_replication_factor: {self.token_replication}
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: {self.snitch}
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{self.seeds}"
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
# The commit log: "periodic" (the default, TL_CASSANDRA_COMMITLOG_SYNC) syncs every
# TL_CASSANDRA_COMMITLOG_PERIOD_MS (50) and acknowledges writes before; a SIGKILLed node
# loses what it acknowledged since its last sync (the fault suite found 6 and 22 writes
# gone), so the worker acks a batch to Kafka only once a later write shows the commit log
# synced past it (sinks/cassandra_sync.py, docs/reliability.md). "batch" fsyncs before
# every acknowledgement: the same guarantee without the worker's wait, at about twice the
# node's CPU per row and half its rows/s here (docs/operations.md).
commitlog_sync: {self.commitlog_sync}
{self.commitlog_period}commitlog_segment_size: 32MiB
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer
# small box: few threads, no snapshots
concurrent_reads: 8
concurrent_writes: {self.settings.cassandra_concurrent_writes}
concurrent_counter_writes: 8
concurrent_compactors: 1
# Memtables: Cassandra's default space (a quarter of the heap on heap, as much off heap) and
# the trie memtable of Cassandra 5.0 (TL_CASSANDRA_MEMTABLE; "skiplist" is the older default).
# With 128 MiB and skiplist memtables a 1 GiB node flushed user_timeline every ~10 s at
# 10-25 MiB, and size-tiered compaction rewrote the growing table (all of it under 50 MiB,
# one bucket) every few flushes: a third of the node's Java samples, 12% of its thread CPU,
# under steady load (JFR; 11% and 3.5% after; docs/operations.md, "Notes on the local servers").
memtable:
  configurations:
    skiplist:
      class_name: SkipListMemtable
    trie:
      class_name: TrieMemtable
    default:
      inherits: {self.settings.cassandra_memtable}
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
# The pipeline runs no lightweight transaction (tweet ids are claimed in PostgreSQL); for
# tools that do, Paxos v2 needs fewer round trips and less work than the v1 default.
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
<!-- Generated by localenv/cassandra_server.py: INFO to logs/cassandra/system.log, warnings also to stdout. -->
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
