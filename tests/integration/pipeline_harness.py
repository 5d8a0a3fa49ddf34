"""Fixtures for end-to-end pipeline tests: an isolated world per test.

Each test gets its own topics, Cassandra keyspace, Redis key prefix, consumer
group and RocksDB folder, so tests never see each other's data, and a worker
runs as a real child process (``faust -A faust_app worker``).
"""
from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import psycopg
from redis.asyncio import Redis

from ops.schema import apply_cassandra, apply_postgres, cassandra_cluster, create_topics
from settings import Settings, get_settings
from sinks.cassandra import CassandraStore
from sinks.reader import HomeTimelineReader
from sinks.redis_timeline import RedisTimelines


def isolated_settings(tmp_path: Path, **overrides) -> Settings:
    tag = uuid.uuid4().hex[:10]
    base = dict(
        topic_tweets=f"it-tweets-{tag}",
        topic_follows=f"it-follows-{tag}",
        topic_activity=f"it-activity-{tag}",
        topic_deliveries=f"it-deliveries-{tag}",
        topic_dead_letters=f"it-dead-{tag}",
        topic_partitions=4,
        cassandra_keyspace=f"it_{tag}",
        postgres_schema=f"it_{tag}",
        redis_prefix=f"it:{tag}:",
        app_id=f"it-{tag}",
        faust_datadir=str(tmp_path / "faust"),
    )
    base.update(overrides)
    return get_settings().replace(**base)


def provision(settings: Settings) -> None:
    apply_cassandra(settings)
    apply_postgres(settings)
    create_topics(settings, settings.topic_partitions)


def drop(settings: Settings) -> None:
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {settings.postgres_schema} CASCADE")
    cluster = cassandra_cluster(settings)
    try:
        session = cluster.connect()
        session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}", timeout=60)
    finally:
        cluster.shutdown()


@asynccontextmanager
async def reader_for(settings: Settings) -> AsyncIterator[HomeTimelineReader]:
    import asyncio

    store = await asyncio.to_thread(CassandraStore.open, settings)
    redis = Redis.from_url(settings.redis_url)
    timelines = RedisTimelines(redis, prefix=settings.redis_prefix, cap=settings.timeline_cap,
                               ttl_s=settings.timeline_ttl_s)
    try:
        yield HomeTimelineReader(settings, store, timelines)
    finally:
        await redis.aclose()
        await asyncio.to_thread(store.close)


async def diff_timelines(reader: HomeTimelineReader, expected: dict[int, list[int]], *, page_size: int = 37) -> dict[int, tuple]:
    """Users whose paged home timeline differs from the reference: user -> (got, expected) heads."""
    diffs = {}
    for user_id, want in sorted(expected.items()):
        got = await reader.all_ids(user_id, page_size=page_size)
        if got != want:
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            diffs[user_id] = (len(got), len(want), first, got[first:first + 3], want[first:first + 3])
    return diffs
