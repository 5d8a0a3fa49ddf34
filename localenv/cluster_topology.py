"""The cluster topology (issue 16): every engine clustered, on one machine.

    ./dev services up --topology cluster      # or: python -m localenv up --topology cluster
    ./dev services status --topology cluster
    ./dev services down --topology cluster    # reset: down + delete the data

* Redis Cluster, 3 masters + 3 replicas (``localenv/redis_cluster.py``), ports 17000-17011;
* three Kafka brokers (KRaft, replication 3, ``min.insync.replicas`` 2) with SASL/SCRAM and
  ACLs (``localenv/kafka_cluster.py``), clients on 19092, 19094, 19096;
* three Cassandra nodes on 127.0.0.1-3, dc1, replication 3, ``LOCAL_QUORUM``
  (``localenv/cassandra_ring.py``), native port 19042;
* PostgreSQL: the single local server of the default topology (its replica is issue 17's).

State in ``.state/cluster/``. ``up`` also applies the schemas (keyspace at RF 3, topics at
replication 3, the namespace's ACLs) and writes one environment file per process kind,
``.state/cluster/env/<role>.env`` (``post``, ``query``, ``worker``, ``admin``): the ``TL_*``
settings that point a process at this topology as its own Kafka principal. The same code runs
on both topologies; only those settings differ::

    set -a; . .state/cluster/env/worker.env; set +a
    .venv/bin/python -m faust -A faust_app worker -l info
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from localenv.cassandra_ring import CassandraRing
from localenv.host import STATE, log
from localenv.kafka_cluster import KafkaCluster
from localenv.postgres_server import Postgres
from localenv.redis_cluster import RedisCluster
from localenv.services import raise_failed, start_all
from localenv.worker import env_file_text
from ops import schema
from settings import Settings, get_settings

REDIS_BASE = 17000
KAFKA_BASE = 19092
CASSANDRA_PORT, CASSANDRA_INTERNODE = 19042, 19043
ROLES = ("post", "query", "worker", "admin")


class ClusterTopology:
    def __init__(self, state: Path | None = None, settings: Settings | None = None) -> None:
        self.state = Path(state or STATE / "cluster").resolve()
        self.base = settings or get_settings()
        self.redis = RedisCluster(self.state / "redis", REDIS_BASE, self.base)
        self.kafka = KafkaCluster(self.state / "kafka", KAFKA_BASE, self.base)
        self.cassandra = CassandraRing(self.state / "cassandra", CASSANDRA_PORT, CASSANDRA_INTERNODE,
                                       settings=self.base)

    def settings_for(self, role: str = "admin") -> Settings:
        """The base settings pointed at every clustered engine, as ``role``'s Kafka principal."""
        s = self.cassandra.with_servers(self.redis.with_servers(self.base))
        return self.kafka.settings_for(role, s)

    def up(self, partitions: int | None = None, echo=log) -> None:
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=3) as pool:  # the ring's nodes start one by one
            ring = pool.submit(self.cassandra.up, echo)
            redis = pool.submit(self.redis.up, echo)
            kafka = pool.submit(self.kafka.up, echo)
            outcomes = [*redis.result(), *kafka.result(), *ring.result()]
        outcomes += start_all(self.base, [Postgres(self.base)])
        raise_failed(outcomes)
        admin = self.settings_for("admin")
        count = schema.apply_cassandra(admin)
        echo(f"schema     ok    cassandra keyspace {admin.cassandra_keyspace} at RF 3: {count} statements")
        schema.apply_postgres(admin)
        topics = schema.create_topics(admin, partitions)
        echo(f"topics     ok    {', '.join(f'{n} {state}' for n, state in topics.items())} (replication 3)")
        echo(f"acls       ok    {self.kafka.grant(admin)} bindings")
        for path in self.write_env():
            echo(f"env        ok    {path}")
        echo(f"cluster topology up in {time.monotonic() - began:.1f}s (state in {self.state})")

    def write_env(self) -> list[Path]:
        """``env/<role>.env``: the settings that differ from the defaults, one ``TL_X=value`` a line."""
        folder = self.state / "env"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for role in ROLES:
            path = folder / f"{role}.env"
            path.write_text(env_file_text(self.settings_for(role)))
            path.chmod(0o600)  # it holds the principal's password
            paths.append(path)
        return paths

    def status(self) -> tuple[list[str], bool]:
        """One line per node, and whether every node of every engine answers."""
        kafka = self.kafka.status()
        ring = self.cassandra.status()
        redis_up = all(node.is_up(3.0) for node in self.redis.nodes)
        lines = [o.line() for o in kafka] + list(self.redis.status()) + [n.line() for n in ring]
        return lines, all(o.up for o in kafka) and redis_up and all(n.answers for n in ring)

    def down(self, echo=log) -> None:
        self.kafka.down(echo)
        self.redis.down(echo)
        self.cassandra.down(echo)

    def reset(self, echo=log) -> None:
        self.kafka.reset(echo)
        self.redis.reset(echo)
        self.cassandra.reset(echo)
