"""Idempotent schema application: Cassandra tables, PostgreSQL tables, Kafka topics.

Each function takes a ``Settings`` so tests can point it at their own keyspace,
database or topic names (``settings.replace(...)``). Running any of them twice
is harmless: tables use ``IF NOT EXISTS`` and an existing topic is not an error.

    from ops.schema import apply_cassandra, apply_postgres, create_topics
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, TypeVar

from schemas import source_topics
from settings import Settings

OPS_DIR = Path(__file__).resolve().parent
CQL_FILE = OPS_DIR / "schema.cql"
SQL_FILE = OPS_DIR / "schema.sql"

# Source topics are the durable log of the system: never expire them.
INFINITE_RETENTION = {"retention.ms": "-1", "retention.bytes": "-1"}
# Deliveries and dead letters are derived/diagnostic: a week is plenty.
WEEK_RETENTION = {"retention.ms": str(7 * 24 * 3600 * 1000)}

T = TypeVar("T")


# --- helpers shared with localenv and the tests -----------------------------------


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion from synchronous code.

    Works both from plain code and from inside a running event loop (pytest-asyncio
    fixtures, Faust): in the latter case the coroutine gets its own loop in a thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


def cassandra_cluster(settings: Settings, connect_timeout: float = 10.0) -> Any:
    """A cassandra-driver ``Cluster`` for the configured hosts (caller shuts it down): the
    sinks' one (``sinks.cassandra.new_cluster``), with requests timing out after
    ``max(connect_timeout, 10)`` s."""
    from sinks.cassandra import new_cluster

    return new_cluster(settings, connect_timeout=connect_timeout, request_timeout=max(connect_timeout, 10.0))


def redis_address(settings: Settings) -> tuple[str, int]:
    url = urllib.parse.urlsplit(settings.redis_url)
    return url.hostname or "127.0.0.1", url.port or 6379


def kafka_address(settings: Settings) -> tuple[str, int]:
    first = settings.kafka_bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port or 9092)


# --- Cassandra --------------------------------------------------------------------


def keyspace_replication(settings: Settings) -> str:
    """The keyspace's replication map: ``NetworkTopologyStrategy`` with the factor of each DC
    ``TL_CASSANDRA_REPLICATION`` lists (the regions' two DCs), else with the replication
    factor in the local DC when one is configured (the ring), else ``SimpleStrategy``."""
    from policies.dc_replication import network_topology, parse_dc_factors

    if settings.cassandra_replication:
        return network_topology(parse_dc_factors(settings.cassandra_replication))
    factor = settings.cassandra_replication_factor
    if settings.cassandra_local_dc:
        return f"{{'class': 'NetworkTopologyStrategy', '{settings.cassandra_local_dc}': {factor}}}"
    return f"{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}"


def cql_statements(text: str, keyspace: str, replication: str = "") -> list[str]:
    """Split a CQL script into statements: drop comments, fill in {keyspace} and
    {replication}, split on ';'."""
    without_comments = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith(("--", "//"))
    )
    without_comments = re.sub(r"/\*.*?\*/", "", without_comments, flags=re.S)
    formatted = without_comments.format(keyspace=keyspace, replication=replication)
    return [stmt.strip() for stmt in formatted.split(";") if stmt.strip()]


def apply_cassandra(settings: Settings, cql_file: Path = CQL_FILE) -> int:
    """Create the keyspace and tables of ``ops/schema.cql``; returns the statement count."""
    statements = cql_statements(cql_file.read_text(), settings.cassandra_keyspace, keyspace_replication(settings))
    cluster = cassandra_cluster(settings)
    try:
        session = cluster.connect()
        for statement in statements:
            session.execute(statement, timeout=60)
        cluster.control_connection.wait_for_schema_agreement(wait_time=30)
    finally:
        cluster.shutdown()
    return len(statements)


# --- PostgreSQL -------------------------------------------------------------------

# Serialises concurrent schema runs (two `up`s at once) on one server.
_PG_SCHEMA_LOCK = 0x74_6C_73_63  # "tlsc"


def apply_postgres(settings: Settings, sql_file: Path = SQL_FILE) -> None:
    """Run ``ops/schema.sql`` in one transaction against ``settings.postgres_dsn``."""
    import psycopg

    script = sql_file.read_text()
    with psycopg.connect(settings.postgres_dsn, connect_timeout=10, **settings.postgres_kwargs()) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {settings.postgres_schema}")
            conn.execute(script)  # no parameters: several statements are allowed


# --- Kafka ------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def min_insync_replicas(replication: int) -> int:
    """Replicas that must have a record before an ``acks=all`` write is acknowledged: a
    majority (1 of 1, 2 of 3), so one broker can be lost without losing an acknowledged record
    or refusing writes."""
    return replication // 2 + 1


def topic_specs(settings: Settings, partitions: int | None = None) -> list[TopicSpec]:
    """The service's topics: the three source logs, deliveries and dead letters, each at
    ``TL_TOPIC_REPLICATION`` replicas with a majority of them in sync for a write."""
    n = partitions or settings.topic_partitions
    durability = {"min.insync.replicas": str(min_insync_replicas(settings.topic_replication))}
    return [
        *(TopicSpec(topic, n, INFINITE_RETENTION | durability) for topic in source_topics(settings)),
        TopicSpec(settings.topic_deliveries, n, WEEK_RETENTION | durability),
        TopicSpec(settings.topic_dead_letters, n, WEEK_RETENTION | durability),
    ]


def create_topics(settings: Settings, partitions: int | None = None) -> dict[str, str]:
    """Create the topics (or fix the retention of existing ones).

    Returns ``{topic: outcome}`` where outcome is ``created``, ``exists`` or
    ``exists with N partitions (wanted M)`` - partition counts of an existing
    keyed topic are never changed here, since that would move keys.
    """
    return run_sync(create_topics_async(settings, partitions))


async def create_topics_async(
    settings: Settings, partitions: int | None = None
) -> dict[str, str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    specs = {spec.name: spec for spec in topic_specs(settings, partitions)}
    admin = AIOKafkaAdminClient(
        **settings.kafka_kwargs(), request_timeout_ms=60_000
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(s.name, s.partitions, settings.topic_replication, topic_configs=s.configs)
                for s in specs.values()
            ]
        )
        outcome: dict[str, str] = {}
        existing: list[str] = []
        for topic, code, *rest in response.topic_errors:
            if code == 0:
                outcome[topic] = "created"
            elif code == TopicAlreadyExistsError.errno:
                existing.append(topic)
            else:
                message = rest[0] if rest else ""
                raise for_code(code)(f"creating topic {topic!r}: {message}")
        if existing:
            outcome.update(await _reconcile_existing(admin, [specs[t] for t in existing]))
            responses = await admin.alter_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, t, specs[t].configs)
                    for t in existing
                ]
            )
            for response in responses:
                for code, message, _type, name in response.resources:
                    if code != 0:
                        raise for_code(code)(f"setting configs of topic {name!r}: {message}")
        return {name: outcome[name] for name in specs}
    finally:
        await admin.close()


async def delete_topics_async(settings: Settings) -> None:
    """Delete the service's topics: for the scratch namespaces of tests and benchmarks, never
    the real log."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        await admin.delete_topics([spec.name for spec in topic_specs(settings)])
    finally:
        await admin.close()


async def _reconcile_existing(admin: Any, specs: list[TopicSpec]) -> dict[str, str]:
    described = await admin.describe_topics([s.name for s in specs])
    have = {t["topic"]: len(t["partitions"]) for t in described}
    outcome = {}
    for spec in specs:
        count = have.get(spec.name, spec.partitions)
        outcome[spec.name] = (
            "exists"
            if count == spec.partitions
            else f"exists with {count} partitions (wanted {spec.partitions})"
        )
    return outcome


async def drop_namespace(settings: Settings, *, postgres_schema: bool = True) -> dict[str, Any]:
    """Remove what a test or benchmark namespace (``Settings.isolated``) left on the servers:
    its topics and Faust's (changelogs, named after the app id), its Redis keys, Cassandra
    keyspace and, unless told otherwise, PostgreSQL schema. Refuses the service's real
    names. Best effort per server; returns what was removed and any error."""
    real = Settings()
    if (settings.cassandra_keyspace == real.cassandra_keyspace or settings.redis_prefix == real.redis_prefix
            or settings.app_id == real.app_id or settings.topic_tweets == real.topic_tweets):
        raise ValueError("drop_namespace is for isolated namespaces, not the service's own names")
    done: dict[str, Any] = {}
    try:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
        await admin.start()
        try:
            ours = {spec.name for spec in topic_specs(settings)}
            names = [t for t in await admin.list_topics() if t in ours or t.startswith(f"{settings.app_id}-")]
            if names:
                await admin.delete_topics(names)
            done["kafka_topics_deleted"] = len(names)
        finally:
            await admin.close()
    except Exception as exc:  # noqa: BLE001 - clean what we can
        done["kafka_error"] = repr(exc)
    try:
        from sinks.redis_client import connect

        redis = connect(settings)
        try:
            keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*", count=2000)]
            for i in range(0, len(keys), 1000):
                await redis.unlink(*keys[i:i + 1000])
            done["redis_keys_deleted"] = len(keys)
        finally:
            await redis.aclose()
    except Exception as exc:  # noqa: BLE001
        done["redis_error"] = repr(exc)

    def cassandra() -> None:
        cluster = cassandra_cluster(settings)
        try:
            cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}", timeout=120)
        finally:
            cluster.shutdown()

    try:
        await asyncio.to_thread(cassandra)
        done["cassandra_keyspace_dropped"] = settings.cassandra_keyspace
    except Exception as exc:  # noqa: BLE001
        done["cassandra_error"] = repr(exc)
    if postgres_schema and settings.postgres_schema != real.postgres_schema:
        try:
            import psycopg

            async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
                await conn.execute(f"DROP SCHEMA IF EXISTS {settings.postgres_schema} CASCADE")
            done["postgres_schema_dropped"] = settings.postgres_schema
        except Exception as exc:  # noqa: BLE001
            done["postgres_error"] = repr(exc)
    return done
