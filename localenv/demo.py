"""The main job, end to end: a workload goes in, timelines come out.

    ./dev demo            # or: python -m localenv.demo [--seed N] [--users N] [--tweets N]

Runs a real Faust worker against the local servers in a fresh namespace (its
own topics, keyspace, PostgreSQL schema, Redis prefix: ``Settings.isolated``, removed
afterwards by ``ops.schema.drop_namespace``), publishes a seeded workload to Kafka,
waits for the pipeline to catch up, prints a few users' home timelines with
how each tweet got there, and checks every user's timeline against the
reference computed from the events alone.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from localenv.worker import Worker
from localenv.workload import generate, produce
from ops.lag import wait_caught_up
from ops.schema import apply_cassandra, apply_postgres, create_topics, drop_namespace
from policies.reference import ReferenceModel
from query.reader import HomeTimelineReader
from settings import Settings, get_settings
from sinks.cassandra import CassandraStore
from sinks.redis_client import connect
from sinks.redis_timeline import RedisTimelines


def demo_settings(workdir: Path) -> Settings:
    # Its own PostgreSQL schema too: the projection agent writes tweets and follows there
    # (with the default schema, the demo's tweets landed in the service's own tables).
    return get_settings().isolated(
        "demo", uuid.uuid4().hex[:8], workdir, topic_partitions=8,
        celebrity_threshold=20, celebrity_hysteresis=5, timeline_cap=100, backfill_limit=50,
    )


async def show(reader: HomeTimelineReader, user_id: int, label: str, limit: int = 6) -> None:
    page = await reader.page(user_id, limit=limit)
    print(f"\n  user {user_id} ({label}) - served from {page.source}")
    for t in page.tweets:
        how = "rebuilt" if page.source == "rebuilt" else ("pulled" if t.tweet_id in page.pulled else "pushed")
        print(f"    {t.tweet_id}  by {t.author_id}  [{how:7}]  {t.text[:48]}")
    if not page.tweets:
        print("    (follows no one with tweets)")


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="timeline-demo-"))
    settings = demo_settings(workdir)
    print(f"==> namespace {settings.app_id}: {settings.topic_partitions} partitions, "
          f"celebrity threshold {settings.celebrity_threshold}, cap {settings.timeline_cap}")
    apply_cassandra(settings)
    apply_postgres(settings)
    create_topics(settings, settings.topic_partitions)
    workload = generate(args.seed, users=args.users, tweets=args.tweets,
                        celebrity_threshold=settings.celebrity_threshold)
    worker = Worker(settings, workdir / "worker.log").start()
    try:
        began = time.monotonic()
        n = await produce(settings, workload.events, workload.poison)
        print(f"==> published {n} events ({len(workload.poison)} of them malformed) "
              f"in {time.monotonic() - began:.1f}s")
        waited = await wait_caught_up(settings, timeout=600, check=worker.check)
        print(f"==> pipeline caught up {waited:.1f}s after publishing")
        store = await asyncio.to_thread(CassandraStore.open, settings)
        redis = connect(settings)
        reader = HomeTimelineReader(settings, store, RedisTimelines.from_settings(redis, settings))
        try:
            model = ReferenceModel()
            for event in workload.events:
                model.apply(event)
            active = [u for u in workload.users if u not in workload.inactive]
            celebs = set(workload.celebrities[1:])  # [0] crosses the threshold both ways
            await show(reader, active[0], "active")
            for user_id in [u for u in active[1:] if model.following(u) & celebs][:20]:
                if (await reader.page(user_id, limit=6)).pulled:
                    await show(reader, user_id, "active, follows a celebrity")
                    break
            if workload.returning:
                await show(reader, workload.returning[0], "came back after 30+ days; its timeline was rebuilt on return")
            if len(workload.inactive) > len(workload.returning):
                await show(reader, workload.inactive[-1], "still inactive")
            expected = model.home_timelines()
            bad = 0
            for user_id, want in expected.items():
                if await reader.all_ids(user_id, page_size=50) != want:
                    bad += 1
            total = sum(map(len, expected.values()))
            print(f"\n==> verified {len(expected)} home timelines ({total} entries) against the "
                  f"reference: {bad} differ")
            return 1 if bad else 0
        finally:
            await redis.aclose()
            await asyncio.to_thread(store.close)
    finally:
        worker.stop()
        await drop_namespace(settings)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--tweets", type=int, default=2000)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
