"""Rebuild the projections from the Kafka log, then verify them.

    python -m ops.rebuild [--projections all|redis] [--workers N] [--no-verify]

``redis``: the Redis timeline and tweet caches are only caches; flushing them is
enough (reads refill them from Cassandra, version-checked).

``all`` (the default) replays the whole log: the derived state is wiped (Redis
caches, the Cassandra projections, the PostgreSQL tweets/follows projection,
the Faust tables' changelog topics and local RocksDB state), the internal
deliveries topic is recreated, the consumer group is deleted (so the agents
start from the beginning of the source topics, which keep everything), and
workers run until they have caught up. The read API keeps answering
throughout, from projections that fill up as the replay proceeds. The workers
of the consumer group must be stopped first (the command checks); PostgreSQL
accounts (``users``) are not derived from the log and are kept.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from aiokafka.errors import KafkaError
from tqdm import tqdm

from localenv.worker import Worker
from ops.lag import consumer_lag
from ops.schema import cassandra_cluster
from ops.verify import Report, verify
from schemas import source_topics
from settings import Settings, get_settings
from sinks.redis_client import connect

TABLES = ("follower-edges", "authors", "early-deletes", "following-edges", "recipients")
CASSANDRA_TABLES = ("tweets", "author_timeline", "user_timeline", "timeline_meta", "following", "author_status")
REDIS_PATTERNS = ("home:*", "homev:*", "atl:*", "atlv:*", "tb:*", "tweet:*", "celebrities")


class RebuildError(RuntimeError):
    pass


def changelog_topics(settings: Settings) -> list[str]:
    """Every table's changelog under every consumer group of the layout (each role's app
    declares every table; a role's unused ones stay empty)."""
    return [f"{group}-{name}-changelog" for group in settings.worker_groups() for name in TABLES]


async def flush_redis(settings: Settings) -> int:
    redis = connect(settings)
    removed = 0
    try:
        for pattern in REDIS_PATTERNS:
            batch: list[bytes] = []
            async for key in redis.scan_iter(match=f"{settings.redis_prefix}{pattern}", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    removed += await redis.unlink(*batch)
                    batch.clear()
            if batch:
                removed += await redis.unlink(*batch)
    finally:
        await redis.aclose()
    return removed


def truncate_cassandra(settings: Settings) -> None:
    cluster = cassandra_cluster(settings)
    try:
        session = cluster.connect()
        for table in CASSANDRA_TABLES:
            session.execute(f"TRUNCATE {settings.cassandra_keyspace}.{table}", timeout=120)
    finally:
        cluster.shutdown()


def truncate_postgres(settings: Settings) -> None:
    with psycopg.connect(settings.postgres_dsn, autocommit=True, **settings.postgres_kwargs()) as conn:
        conn.execute("TRUNCATE tweets, tweet_early_deletes, follows")


async def reset_kafka_state(settings: Settings) -> None:
    """Recreate the deliveries topic empty, drop the changelogs, rewind the group to the start."""
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        for response in await admin.describe_consumer_groups(list(settings.worker_groups())):
            for group in response.groups:
                state = group[2]
                if state not in ("Empty", "Dead", ""):
                    raise RebuildError(
                        f"consumer group {group[1]!r} is {state}: "
                        "stop the workers before a full rebuild")
        existing = set(await admin.list_topics())
        doomed = [t for t in changelog_topics(settings) + [settings.topic_deliveries] if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
        for _ in range(120):  # topic deletion is asynchronous in Kafka
            if not set(doomed) & set(await admin.list_topics()):
                break
            await asyncio.sleep(0.5)
        await admin.create_topics(
            [NewTopic(settings.topic_deliveries, settings.topic_partitions, settings.topic_replication)])
    finally:
        await admin.close()
    for group, topics in settings.worker_groups().items():
        await rewind_group(settings, group, list(topics))


async def rewind_group(settings: Settings, group: str, topics: list[str]) -> None:
    """Commit the beginning offset of every partition of ``topics`` for the (empty) consumer group."""
    consumer = AIOKafkaConsumer(**settings.kafka_kwargs(), group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        for _ in range(60):
            cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - no public call
            if all(cluster.partitions_for_topic(t) for t in topics):
                break
            await asyncio.sleep(0.5)
        tps = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        await consumer.commit({tp: starts[tp] for tp in tps})
    finally:
        await consumer.stop()


async def follow_progress(settings: Settings, workers: list[Worker], timeout: float) -> float:
    """A progress bar over the source topics' consumer lag; returns seconds until caught up."""
    began = time.monotonic()
    total = None
    with tqdm(unit="ev", desc="replaying", dynamic_ncols=True) as bar:
        zero_since = None
        while time.monotonic() - began < timeout:
            for w in workers:
                w.check()
            try:
                lag = await consumer_lag(settings)
            except KafkaError:
                await asyncio.sleep(1)
                continue
            source_lag = sum(lag[t] for t in source_topics(settings))
            if total is None or source_lag > total:
                total = max(total or 0, source_lag)
                bar.reset(total=total)
            bar.n = total - source_lag
            bar.refresh()
            if sum(lag.values()) == 0:
                zero_since = zero_since or time.monotonic()
                if time.monotonic() - zero_since >= 2:
                    return time.monotonic() - began
            else:
                zero_since = None
            await asyncio.sleep(1)
    raise RebuildError(f"replay did not catch up within {timeout:.0f}s")


async def rebuild(settings: Settings, *, projections: str = "all", workers: int = 1,
                  check: bool = True, timeout: float = 3600, workdir: Path | None = None) -> Report | None:
    if projections == "redis":
        removed = await flush_redis(settings)
        print(f"flushed {removed} Redis keys; caches refill from Cassandra on read")
        return await verify(settings) if check else None
    await reset_kafka_state(settings)  # refuses while workers run
    removed = await flush_redis(settings)
    await asyncio.to_thread(truncate_cassandra, settings)
    await asyncio.to_thread(truncate_postgres, settings)
    datadir = Path(settings.faust_datadir)
    shutil.rmtree(datadir, ignore_errors=True)
    print(f"wiped: {removed} Redis keys, Cassandra {', '.join(CASSANDRA_TABLES)}, PostgreSQL tweets/follows, "
          f"Faust state in {datadir} and changelogs")
    workdir = workdir or Path(tempfile.mkdtemp(prefix="rebuild-"))
    procs = []
    for i in range(workers):
        s = settings if workers == 1 else settings.replace(faust_datadir=str(datadir / f"w{i}"))
        procs.append(Worker(s, workdir / f"worker-{i}.log").start())
    try:
        seconds = await follow_progress(settings, procs, timeout)
        print(f"caught up in {seconds:.1f}s")
    finally:
        for w in procs:
            w.stop()
    if not check:
        return None
    report = await verify(settings)
    print(f"verify: {report.users} users, {report.entries} entries, {len(report.diffs)} differ")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projections", choices=["all", "redis"], default="all")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = asyncio.run(rebuild(get_settings(), projections=args.projections,
                                     workers=args.workers, check=not args.no_verify))
    except RebuildError as exc:
        print(f"rebuild: {exc}", file=sys.stderr)
        return 2
    return 0 if report is None or report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
