"""Rebuild throughput: how fast a full replay of the log rebuilds every projection.

    python -m bench.rebuild_bench [--users N] [--tweets N] [--seed S] [--workers N]

Publishes a seeded workload into an isolated namespace (``Settings.isolated``, removed
afterwards by ``ops.schema.drop_namespace``), lets a worker build the
projections, then wipes them and times ``ops.rebuild`` (events/s over the
source topics, timeline entries/s written), and checks the result with
``ops.verify``. Writes ``bench/results/rebuild-<timestamp>.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import orjson

from localenv.worker import Worker
from localenv.workload import generate, produce
from ops.lag import wait_caught_up
from ops.rebuild import rebuild
from ops.schema import apply_cassandra, apply_postgres, cassandra_cluster, create_topics, drop_namespace
from settings import Settings, get_settings

RESULTS = Path(__file__).resolve().parent / "results"


def count_rows(settings, table: str) -> int:
    cluster = cassandra_cluster(settings)
    try:
        session = cluster.connect()
        return session.execute(f"SELECT COUNT(*) FROM {settings.cassandra_keyspace}.{table}", timeout=300).one()[0]
    finally:
        cluster.shutdown()


async def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="rebuild-bench-"))
    # Its own topics, keyspace, PostgreSQL schema (the projection writes there, and the
    # rebuild truncates it), Redis prefix and consumer group; removed at the end.
    settings = get_settings().isolated(
        "rb", os.urandom(4).hex(), tmp, topic_partitions=8, celebrity_threshold=50, celebrity_hysteresis=10,
    )
    try:
        return await measure(args, settings, tmp)
    finally:
        await drop_namespace(settings)


async def measure(args: argparse.Namespace, settings: Settings, tmp: Path) -> dict:
    apply_cassandra(settings)
    apply_postgres(settings)
    create_topics(settings, settings.topic_partitions)
    workload = generate(args.seed, users=args.users, tweets=args.tweets, celebrity_threshold=50)
    live_began = time.monotonic()  # the same events processed live, worker start included as in a rebuild
    worker = Worker(settings, tmp / "live.log").start()
    try:
        await produce(settings, workload.events)
        await wait_caught_up(settings, timeout=1800, check=worker.check)
        live_seconds = time.monotonic() - live_began
    finally:
        worker.stop()
    live_entries = await asyncio.to_thread(count_rows, settings, "user_timeline")
    began = time.monotonic()
    report = await rebuild(settings, workers=args.workers, check=False, workdir=tmp, timeout=3600)
    seconds = time.monotonic() - began
    entries = await asyncio.to_thread(count_rows, settings, "user_timeline")
    check_began = time.monotonic()
    from ops.verify import verify

    verified = await verify(settings)
    result = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "dataset": {"users": args.users, "events": len(workload.events), "partitions": settings.topic_partitions},
        "workers": args.workers,
        "rebuild_seconds": round(seconds, 2),
        "events_per_s": round(len(workload.events) / seconds, 1),
        "timeline_entries": entries,
        "timeline_entries_per_s": round(entries / seconds, 1),
        # Live: a worker started with the publishing of the same events, until caught up (as the
        # rebuild's time includes starting its workers and waiting until caught up).
        "live": {"seconds": round(live_seconds, 2), "timeline_entries": live_entries,
                 "timeline_entries_per_s": round(live_entries / live_seconds, 1)},
        "rebuild_vs_live": round((entries / seconds) / (live_entries / live_seconds), 3),
        "verify": {"users": verified.users, "entries": verified.entries, "differ": len(verified.diffs),
                   "seconds": round(time.monotonic() - check_began, 1)},
    }
    assert report is None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--tweets", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"rebuild-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"written to {out}")


if __name__ == "__main__":
    main()
