"""The regions topology (issue 17): the design's multi-region deployment on one machine.

    ./dev services up --topology regions       # or: python -m localenv up --topology regions
    ./dev services status --topology regions
    ./dev services down --topology regions     # reset: down + delete the data

Two regions, each on a loopback address of its own (every server and process of a region
binds that address only), each a complete stack:

* region ``a`` (127.0.1.1), the primary: Kafka (one KRaft broker), Redis, PostgreSQL (the
  primary), the stream worker, the Post service and the query service;
* region ``b`` (127.0.2.1), a secondary: Kafka, Redis, a PostgreSQL streaming replica of
  a's, its own stream worker, a Post service that forwards every request to a's
  (``post/forward.py``), its own query service;
* Cassandra: one cluster, data center ``dc1`` on a's address and ``dc2`` on b's (one node
  each), a keyspace per region (``timeline_a``, ``timeline_b``), each
  ``NetworkTopologyStrategy {'dc1': 1, 'dc2': 1}``, every region's clients at
  ``LOCAL_QUORUM`` in their own data center (``localenv/cassandra_ring.py``);
* MirrorMaker 2 (Kafka's own, ``localenv/kafka_mirror.py``) copies a's source topics
  (tweets, follows, user-activity) to b, same names, same partitions, same order.

Where each projection is computed (docs/operations.md "Two regions"): every region fans out
from its own copy of the log. b's worker reads the mirrored topics with its own follower
graph (RocksDB, changelogs in b's Kafka) and writes its own Redis and, through its data
center, its own keyspace (replicated to the other data center: a copy of every region's
projections in both); a's does the same. A region never reads or writes the other's
projections, so a worker that lags (a region coming back from an outage replays hours of
the log) cannot put older state under the other region's readers, and a region keeps its
timelines right when the other is gone. Only the primary's worker projects into PostgreSQL (b's is a read-only
replica of it). Writes go to the primary: b's Post service forwards them; b's query
service sends ``user_active`` events to a's Kafka and writes markers on a's PostgreSQL, so
both workers read the same log.

Ports (the same on both addresses): Kafka 21092 (controller 21093, metrics 21071), Redis 21379,
PostgreSQL 21432, Cassandra 21042 (internode 21043, metrics 21044), Post 21081, query
21082, worker 21066. State in ``.state/regions/``; ``up`` writes each region's settings
as ``.state/regions/env/<region>-<role>.env`` (roles post, query, worker).
"""
from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from localenv.cassandra_ring import CassandraRing
from localenv.host import STATE, log
from localenv.kafka_mirror import MirrorMaker
from localenv.kafka_server import Kafka
from localenv.postgres_replica import PostgresPrimary, PostgresReplica
from localenv.processes import PostService, QueryService, StreamWorker
from localenv.redis_server import Redis
from localenv.service import Service, stop_all
from localenv.services import raise_failed, start_all
from localenv.worker import env_file_text
from ops import schema
from settings import Settings, get_settings


@dataclass(frozen=True)
class RegionSpec:
    name: str
    address: str
    dc: str
    role: str  # primary | secondary


REGIONS = (RegionSpec("a", "127.0.1.1", "dc1", "primary"), RegionSpec("b", "127.0.2.1", "dc2", "secondary"))


@dataclass(frozen=True)
class RegionPorts:
    kafka: int = 21092
    kafka_metrics: int = 21071
    redis: int = 21379
    postgres: int = 21432
    cassandra: int = 21042
    cassandra_internode: int = 21043
    post: int = 21081
    query: int = 21082
    worker: int = 21066


ROLES = ("post", "query", "worker")


@dataclass(frozen=True)
class Endpoints:
    """Where a region's servers and services answer."""

    spec: RegionSpec
    ports: RegionPorts

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.spec.address}:{self.ports.kafka}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.spec.address}:{self.ports.redis}/0"

    @property
    def postgres_dsn(self) -> str:
        return f"postgresql://timeline:timeline@{self.spec.address}:{self.ports.postgres}/timeline"

    @property
    def post_url(self) -> str:
        return f"http://{self.spec.address}:{self.ports.post}"

    @property
    def query_url(self) -> str:
        return f"http://{self.spec.address}:{self.ports.query}"


class Region:
    """One region's servers and processes, and the settings its processes run with."""

    def __init__(self, spec: RegionSpec, topology: "RegionsTopology") -> None:
        self.spec = spec
        self.topology = topology
        self.ports = topology.ports
        self.at = Endpoints(spec, topology.ports)
        self.state = topology.state / spec.name
        base = self.settings_for("worker")
        self.kafka = Kafka(base, state=self.state, metrics_port=self.ports.kafka_metrics)
        self.redis = Redis(base, state=self.state)
        self.processes: dict[str, Service] = {
            "worker": StreamWorker(self.settings_for("worker"), state=self.state, listen_host=spec.address,
                                   listen_port=self.ports.worker, worker_name=f"region-{spec.name}-w1"),
            "post": PostService(self.settings_for("post"), state=self.state, listen_host=spec.address,
                                listen_port=self.ports.post),
            "query": QueryService(self.settings_for("query"), state=self.state, listen_host=spec.address,
                                  listen_port=self.ports.query),
        }

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def primary(self) -> bool:
        return self.spec.role == "primary"

    def settings_for(self, role: str) -> Settings:
        """The settings of this region's ``role`` process (post, query, worker; ``admin`` =
        worker's, for tools run against this region's stores)."""
        primary = Endpoints(self.topology.primary_spec, self.ports)
        s = self.topology.cassandra.settings_for(self.spec.dc, self.topology.base).replace(
            region=self.spec.name,
            cassandra_keyspace=f"{self.topology.base.cassandra_keyspace}_{self.spec.name}",
            kafka_bootstrap=self.at.kafka_bootstrap,
            redis_url=self.at.redis_url,
            postgres_dsn=self.at.postgres_dsn,
            faust_datadir=str(self.state / "faust"),
        )
        if self.primary:
            # b's Post service forwards its clients' requests: their address is in its header.
            others = tuple(f"{r.address}/32" for r in self.topology.specs if r.role != "primary")
            return s.replace(trusted_proxies=(*s.trusted_proxies, *others))
        s = s.replace(region_role=self.spec.role, primary_post_url=primary.post_url,
                      postgres_primary_dsn=primary.postgres_dsn)
        if role == "query":  # user_active events are writes: to the primary's log, as every region reads it
            s = s.replace(kafka_bootstrap=primary.kafka_bootstrap)
        return s


class RegionsTopology:
    def __init__(self, state: Path | None = None, settings: Settings | None = None, *,
                 specs: tuple[RegionSpec, ...] = REGIONS, ports: RegionPorts = RegionPorts()) -> None:
        self.state = Path(state or STATE / "regions").resolve()
        self.base = settings or get_settings()
        self.specs = specs
        self.ports = ports
        self.primary_spec = next(spec for spec in specs if spec.role == "primary")
        self.cassandra = CassandraRing(
            self.state / "cassandra", ports.cassandra, ports.cassandra_internode, settings=self.base,
            nodes=tuple((spec.address, spec.dc) for spec in specs))
        self.regions = {spec.name: Region(spec, self) for spec in specs}
        a, b = self.regions["a"], self.regions["b"]
        self.postgres_primary = PostgresPrimary(a.settings_for("worker"), state=a.state)
        self.postgres_replica = PostgresReplica(b.settings_for("worker"), state=b.state,
                                                primary=self.postgres_primary, replica_name=b.name)
        self.postgres_primary.replicas = (b.name,)
        self.mirror = MirrorMaker(b.settings_for("worker"), state=b.state, source=a.settings_for("worker"),
                                  source_alias=a.name, target_alias=b.name)

    def region(self, name: str) -> Region:
        return self.regions[name]

    def servers(self) -> list[Service]:
        return [*(s for r in self.regions.values() for s in (r.kafka, r.redis)), self.postgres_primary]

    def up(self, partitions: int | None = None, echo=log, processes: bool = True) -> None:
        began = time.monotonic()
        a, b = self.regions["a"], self.regions["b"]
        with ThreadPoolExecutor(max_workers=2) as pool:  # the ring's nodes start one by one
            ring = pool.submit(self.cassandra.up, echo)
            outcomes = start_all(self.base, self.servers())
            outcomes += ring.result()
        raise_failed(outcomes)
        for region in (a, b):
            mine = region.settings_for("worker")
            count = schema.apply_cassandra(mine)
            echo(f"schema     ok    cassandra keyspace {mine.cassandra_keyspace} in dc1 and dc2: {count} statements")
        admin = a.settings_for("worker")
        schema.apply_postgres(admin)
        echo("schema     ok    postgres (primary, region a)")
        raise_failed(start_all(self.base, [self.postgres_replica]))
        for region in (a, b):
            topics = schema.create_topics(region.settings_for("worker"), partitions)
            echo(f"topics     ok    region {region.name}: {', '.join(f'{n} {st}' for n, st in topics.items())}")
        raise_failed(start_all(self.base, [self.mirror]))
        if processes:
            raise_failed(start_all(self.base, [p for r in (a, b) for p in r.processes.values()]))
        for path in self.write_env():
            echo(f"env        ok    {path}")
        echo(f"regions topology up in {time.monotonic() - began:.1f}s (state in {self.state})")
        for region in (a, b):
            echo(f"region {region.name} ({region.spec.role}): post {region.at.post_url}  query {region.at.query_url}")

    def write_env(self) -> list[Path]:
        """``env/<region>-<role>.env``: the settings that differ from the defaults."""
        folder = self.state / "env"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for region in self.regions.values():
            for role in ROLES:
                path = folder / f"{region.name}-{role}.env"
                path.write_text(env_file_text(region.settings_for(role)))
                paths.append(path)
        return paths

    def everything(self) -> list[tuple[str, Service]]:
        """(label, service) of every process and server, processes first (the order to stop)."""
        out: list[tuple[str, Service]] = []
        for region in self.regions.values():
            out += [(f"{region.name}/{name}", svc) for name, svc in region.processes.items()]
        out.append(("b/mirror", self.mirror))
        for region in self.regions.values():
            out += [(f"{region.name}/kafka", region.kafka), (f"{region.name}/redis", region.redis)]
        out += [("b/postgres", self.postgres_replica), ("a/postgres", self.postgres_primary)]
        return out

    def status(self) -> tuple[list[str], bool]:
        lines, ok = [], True
        for label, svc in self.everything():
            up = svc.is_up(3.0)
            ok &= up
            lines.append(f"{label:<12} {'up' if up else 'DOWN':<4}  {svc.address}")
        ring = self.cassandra.status()
        lines += [n.line() for n in ring]
        lines += self.replication_lines()
        return lines, ok and all(n.answers for n in ring)

    def replication_lines(self) -> list[str]:
        """How far b is behind a: records of a's source topics not yet in b, PostgreSQL's replay."""
        out = []
        try:
            behind = sum(max(0, n) for n in self.mirror.lag().values())
            out.append(f"mirror       a -> b: {behind} records of a's source topics not yet in b")
        except Exception as exc:  # noqa: BLE001 - a status line, whatever is down
            out.append(f"mirror       lag unknown: {exc}")
        try:
            for r in self.postgres_primary.replication():
                out.append(f"postgres     {r['name']} {r['state']}: {r['behind_bytes']} bytes to replay, "
                           f"replay lag {r['replay_lag_s'] or 0:.3f} s")
        except Exception as exc:  # noqa: BLE001
            out.append(f"postgres     replication unknown: {exc}")
        return out

    def down(self, echo=log) -> None:
        labelled = self.everything()
        processes = [(l, s) for l, s in labelled if l.split("/")[1] in ROLES]
        servers = [(l, s) for l, s in labelled if (l, s) not in processes]
        for group in (processes, servers):
            stop_all([s for _, s in group], [f"{l:<12}" for l, _ in group], echo)
        self.cassandra.down(echo)

    def reset(self, echo=log) -> None:
        self.down(echo)
        self.cassandra.reset(echo)
        shutil.rmtree(self.state, ignore_errors=True)
        echo(f"deleted {self.state}")
