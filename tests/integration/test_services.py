"""The four local servers answer real requests, and the schema helpers are idempotent.

Each test uses its own throwaway names (uuid) so runs never see each other's data.
"""
from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from localenv.kafka_server import Kafka
from localenv.service import Outcome
from localenv.services import drift_warnings, status
from ops import schema
from settings import Settings


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def test_status_reports_every_server_up(services: Settings) -> None:
    outcomes = status(services)
    assert {o.name for o in outcomes} == {"kafka", "cassandra", "redis", "postgres"}
    assert all(o.up for o in outcomes), [o.line() for o in outcomes]


# --- Kafka -----------------------------------------------------------------------------


async def test_kafka_produce_and_consume(services: Settings) -> None:
    topic = unique("it-roundtrip")
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
        producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, b"hello", key=b"user-1")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=services.kafka_bootstrap,
            group_id=unique("it-group"),
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"user-1", b"hello")
        assert (record.partition, record.offset) == (sent.partition, sent.offset)
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def test_the_broker_creates_no_topic_on_its_own(services: Settings) -> None:
    """Producing to a topic nobody created fails instead of creating it with the broker's
    defaults (production brokers run so; localenv.kafka_server writes auto.create.topics.enable=false)."""
    topic = unique("it-nobody-created")
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, request_timeout_ms=3000)
    await producer.start()
    try:
        with pytest.raises(KafkaError):
            await producer.send_and_wait(topic, b"hello")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        assert topic not in await admin.list_topics(), (
            "the broker creates topics on its own: it runs with an old config "
            "(./dev services down && ./dev services up)")
    finally:
        await admin.close()


def test_up_notices_a_running_broker_with_another_config(services: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = Kafka(services)
    assert kafka.config_drift() == [], "restart it: ./dev services down && ./dev services up"
    written = Kafka._server_properties
    monkeypatch.setattr(Kafka, "_server_properties",
                        lambda self: written(self).replace("\nnum.partitions=8\n", "\nnum.partitions=7\n"))
    assert kafka.config_drift() == ["num.partitions=8 (localenv/kafka_server.py now writes 7)"]
    outcomes = [Outcome(name, "", True, "already running") for name in ("cassandra", "kafka", "postgres", "redis")]
    (line,) = drift_warnings(services, outcomes)
    assert line.startswith("kafka      STALE") and "num.partitions=8" in line


async def test_create_topics_is_idempotent_and_sets_retention(services: Settings) -> None:
    suffix = uuid.uuid4().hex[:12]
    settings = services.replace(
        topic_tweets=f"it-tweets-{suffix}",
        topic_follows=f"it-follows-{suffix}",
        topic_activity=f"it-activity-{suffix}",
        topic_deliveries=f"it-deliveries-{suffix}",
        topic_dead_letters=f"it-dead-{suffix}",
    )
    names = [spec.name for spec in schema.topic_specs(settings)]
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        first = await schema.create_topics_async(settings, partitions=2)
        second = schema.create_topics(settings, partitions=2)  # sync API, from a running loop
        third = await schema.create_topics_async(settings, partitions=4)
        assert first == dict.fromkeys(names, "created")
        assert second == dict.fromkeys(names, "exists")
        assert third[settings.topic_tweets] == "exists with 2 partitions (wanted 4)"

        described = await admin.describe_topics(names)
        assert {t["topic"]: len(t["partitions"]) for t in described} == dict.fromkeys(names, 2)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, {"retention.ms": None}) for n in names]
        )
        retention = {
            resource[3]: dict((c[0], c[1]) for c in resource[4])["retention.ms"]
            for response in responses
            for resource in response.resources
        }
        assert retention[settings.topic_tweets] == "-1"
        assert retention[settings.topic_follows] == "-1"
        assert retention[settings.topic_activity] == "-1"
        assert retention[settings.topic_deliveries] == str(7 * 24 * 3600 * 1000)
    finally:
        await admin.delete_topics(names)
        await admin.close()


# --- Cassandra -------------------------------------------------------------------------


def test_cassandra_schema_write_and_read(services: Settings) -> None:
    settings = services.replace(cassandra_keyspace=unique("it"))
    assert schema.apply_cassandra(settings) == schema.apply_cassandra(settings)  # idempotent
    cluster = schema.cassandra_cluster(settings)
    try:
        session = cluster.connect(settings.cassandra_keyspace)
        session.execute(
            "INSERT INTO tweets (tweet_id, author_id, text, created_at) VALUES (%s, %s, %s, %s)",
            (42, 7, "hello cassandra", 1_700_000_000_000),
        )
        row = session.execute("SELECT author_id, text FROM tweets WHERE tweet_id = %s", (42,)).one()
        assert (row.author_id, row.text) == (7, "hello cassandra")
        # Paxos state an older worker's claims left is kept 3 h, not the default 10 days (ops/schema.cql)
        grace = session.execute("SELECT gc_grace_seconds FROM system_schema.tables WHERE keyspace_name = %s "
                                "AND table_name = 'tweets'", (settings.cassandra_keyspace,)).one()
        assert grace.gc_grace_seconds == 3 * 3600
    finally:
        try:
            cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}")
        finally:
            cluster.shutdown()


def test_cql_statements_drop_comments_and_fill_keyspace() -> None:
    text = "-- {keyspace} in a comment; with a semicolon\nCREATE KEYSPACE {keyspace} WITH r = {{'a': 1}};\n"
    assert schema.cql_statements(text, "ks") == ["CREATE KEYSPACE ks WITH r = {'a': 1}"]


# --- Redis -----------------------------------------------------------------------------


def test_redis_set_and_get(services: Settings) -> None:
    key = unique("it")
    client = redis.Redis.from_url(services.redis_url)
    try:
        assert client.set(key, "value", ex=60)
        assert client.get(key) == b"value"
        assert 0 < client.ttl(key) <= 60
        client.delete(key)
    finally:
        client.close()


# --- PostgreSQL --------------------------------------------------------------------------


def test_postgres_schema_and_row(services: Settings) -> None:
    schema.apply_postgres(services)  # idempotent: the fixture already applied it once
    table = unique("it")
    with psycopg.connect(services.postgres_dsn) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables").fetchall()}
        assert {"users", "tweets", "follows"} <= tables
        conn.execute(f"CREATE TEMP TABLE {table} (id bigint PRIMARY KEY, body text)")
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "hello postgres"))
        assert conn.execute(f"SELECT body FROM {table} WHERE id = 1").fetchone() == (
            "hello postgres",
        )


def test_tests_in_this_folder_are_marked_integration(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration") is not None
