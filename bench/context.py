"""What the benchmark's phases (``bench/phases/``) share: the run's state and its tools.

``RunContext`` is one run: its arguments and scale, its isolated namespace (``Settings``),
the seeded graph, the worker, the lag monitor (``ops.lag.LagMonitor``), the report being
built, and what one phase measures for the next ones (the fanout capacity, the readers).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import orjson
from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from api.dependencies import REDIS_TIMEOUT_S
from bench import stage_times
from bench.graph import Graph, TweetFactory, scaled_spec
from bench.profile_worker import ProfiledWorker
from bench.sysstats import ProcessSet, pid_listening_on
from localenv.worker import Worker
from localenv.workload import KEY_OF, TOPIC_OF, produce, topic_name
from ops.lag import CaughtUp, LagMonitor
from ops.schema import apply_cassandra, apply_postgres, create_topics_async
from query.reader import HomeTimelineReader
from schemas import encode_key
from settings import Settings, get_settings
from sinks.cassandra import CassandraStore
from sinks.redis_client import connect
from sinks.redis_pipelined import PipelinedRedis
from sinks.redis_timeline import RedisTimelines

REPO = Path(__file__).resolve().parent.parent

SCALES: dict[str, dict[str, Any]] = {
    "small": dict(
        partitions=4, calibrate_deliveries=1_500, throughput_s=6, lag_s=5, lag_floor_s=3, lag_loads=(0.5, 0.8), mixed_s=6,
        profile_s=4, pg_tweets=50_000, pg_queries=60, post_users=10, post_requests=300, post_concurrency=(16,),
        read_bench_args=["--requests", "80", "--concurrency", "1", "--readers", "5", "--normal", "20",
                         "--tweets", "10", "--wrk-seconds", "1"],
        # More server processes at concurrency: python -m query.service --workers N (issue 14).
        read_bench_processes_args=[],
        inactive_sample=100,
    ),
    "full": dict(
        partitions=8, calibrate_deliveries=40_000, throughput_s=75, lag_s=60, lag_floor_s=20, lag_loads=(0.25, 0.5, 0.8),
        mixed_s=30,
        profile_s=20, pg_tweets=1_000_000, pg_queries=300, post_users=50, post_requests=3000,
        post_concurrency=(8, 32),
        read_bench_args=["--requests", "1500", "--concurrency", "1,8"],
        read_bench_processes_args=[["--requests", "1500", "--concurrency", "8", "--workers", "2",
                                    "--scenarios", "cache_hit"]],
        inactive_sample=500,
    ),
}
READ_LIMIT = 50


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bar(**kw: Any) -> tqdm:
    return tqdm(file=sys.stderr, mininterval=1.0, dynamic_ncols=True, leave=False, **kw)


def worker_pids(worker: Worker, name: str = "worker") -> dict[str, int]:
    """A worker's processes by name: ``name``, or ``name (role)`` for each of a split worker's."""
    return {(name if role == "all" else f"{name} ({role})"): proc.pid for role, proc in worker.procs.items()}


# The layout measured: the one docs/operations.md recommends for a host with two cores or more
# (a process per stage: bench/results/worker-split-20261204/README.md).
BENCH_WORKER_LAYOUT = "split"


def bench_settings(base: Settings, tag: str, workdir: Path, partitions: int, threshold: int,
                   hysteresis: int) -> Settings:
    """The run's own namespace (``Settings.isolated``: topics ``bench-<kind>-<tag>``, keyspace
    and schema ``bench_<tag>``, consumer group ``bench-<tag>``), the benchmark's celebrity
    numbers, and rate limits out of the way (their Redis round trips are still made). The
    worker layout is ``BENCH_WORKER_LAYOUT`` unless TL_WORKER_LAYOUT is set."""
    return base.isolated(
        "bench", tag, workdir, topic_partitions=partitions,
        worker_layout=base.worker_layout if "TL_WORKER_LAYOUT" in os.environ else BENCH_WORKER_LAYOUT,
        celebrity_threshold=threshold, celebrity_hysteresis=hysteresis,
        post_rate_burst=10**9, post_rate_per_s=1e9, read_rate_burst=10**9, read_rate_per_s=1e9,
        signup_rate_burst=10**9, signup_rate_per_s=1e9, follow_rate_burst=10**9, follow_rate_per_s=1e9,
        token_lookup_rate_burst=10**9, token_lookup_rate_per_s=1e9,
    )


async def provision(settings: Settings) -> None:
    """The namespace's PostgreSQL schema and tables, Cassandra keyspace and Kafka topics."""
    await asyncio.to_thread(apply_postgres, settings)  # creates the schema too
    await asyncio.to_thread(apply_cassandra, settings)
    await create_topics_async(settings, partitions=settings.topic_partitions)


class Publisher:
    """An acks=all producer that records when Kafka acknowledged each event."""

    def __init__(self, settings: Settings, linger_ms: int = 0) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(**settings.kafka_kwargs(), acks="all",
                                         enable_idempotence=True, linger_ms=linger_ms,
                                         max_batch_size=256 * 1024)

    async def start(self) -> "Publisher":
        await self.producer.start()
        return self

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, event: dict, on_ack: Callable[[float], None] | None = None) -> asyncio.Future:
        kind = event["type"]
        fut = await self.producer.send(topic_name(self.settings, TOPIC_OF[kind]), orjson.dumps(event),
                                       key=encode_key(event[KEY_OF[kind]]))
        if on_ack is not None:
            fut.add_done_callback(lambda f: on_ack(time.time()) if not f.exception() else None)
        return fut


async def paced(rate: float, duration: float, fn: Callable[[int], Any]) -> int:
    """Call ``fn(i)`` (a coroutine) at ``rate`` per second for ``duration`` s; returns the count."""
    began = time.perf_counter()
    i = 0
    while True:
        due = began + i / rate
        if due - began >= duration:
            return i
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await fn(i)
        i += 1


@asynccontextmanager
async def open_reader(settings: Settings) -> AsyncIterator[HomeTimelineReader]:
    """The read side on the run's stores (``reader.cassandra``, ``reader.redis``), closed afterwards:
    the query service's, whose first round trip goes over its own pipelined connection."""
    store = await asyncio.to_thread(CassandraStore.open, settings)
    redis = connect(settings)
    pipelined = PipelinedRedis.for_settings(settings, timeout_s=REDIS_TIMEOUT_S, connect_timeout_s=REDIS_TIMEOUT_S)
    try:
        yield HomeTimelineReader(settings, store, RedisTimelines.from_settings(redis, settings), pipelined=pipelined)
    finally:
        if pipelined is not None:
            await pipelined.aclose()
        await redis.aclose()
        await asyncio.to_thread(store.close)


async def timed_page(reader: HomeTimelineReader, user_id: int, drop: bool = False) -> tuple[float, Any]:
    """(seconds, page) of one first-page read; ``drop``: the cached timeline is deleted first (not timed)."""
    if drop:
        await reader.redis.delete(reader.timelines.key(user_id))
    t = time.perf_counter()
    page = await reader.page(user_id, limit=READ_LIMIT)
    return time.perf_counter() - t, page


class RunContext:
    """One benchmark run: what every phase reads, and what a phase leaves for the next ones."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = SCALES[args.scale]
        self.stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.tag = f"{self.stamp.lower()[:15]}{uuid.uuid4().hex[:4]}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-run-{self.tag}-"))
        self.base = get_settings()
        self.spec, hysteresis = scaled_spec(args.scale)
        self.settings = bench_settings(self.base, self.tag, self.workdir, self.cfg["partitions"],
                                       self.spec.celebrity_threshold, hysteresis)
        self.rng = random.Random(args.seed)
        self.out_dir: Path = args.out_dir
        self.report: dict[str, Any] = {}
        self.graph: Graph | None = None
        self.factory: TweetFactory | None = None
        self.worker: ProfiledWorker | None = None
        # ``TL_BENCH_WORKERS=N``: N-1 more workers in the same consumer group (partitions split
        # among them, as ``bench.scale_workers`` starts them); only the first is profiled and
        # its metrics scraped, every worker's CPU is counted ("worker 2", ...).
        self.worker_count = int(os.environ.get("TL_BENCH_WORKERS", "1"))
        self.extra_workers: list[Worker] = []
        self.monitor: LagMonitor | None = None
        # deliveries/s, measured by the fanout throughput phase; ``TL_BENCH_CAPACITY`` gives it
        # when that phase is skipped (``--skip ceilings,fanout_throughput``: the lag points of an
        # earlier run's capacity, e.g. to profile one of them without the burst before it)
        given = os.environ.get("TL_BENCH_CAPACITY", "")
        self.capacity: float | None = float(given) if given else None
        self.readers: dict[str, list[int]] | None = None  # reader groups of the in-process reads phase

    def start_extra_workers(self, count: int) -> None:
        """More workers in the consumer group (each its own RocksDB folder and name) until
        ``count`` run, the first (``self.worker``) included."""
        while 1 + len(self.extra_workers) < count:
            n = 2 + len(self.extra_workers)
            settings = dataclasses.replace(self.settings, faust_datadir=str(self.workdir / f"faust-{n}"),
                                           worker_name=f"bench-worker-{n}")
            self.extra_workers.append(Worker(settings, self.workdir / f"worker-{n}.log").start())

    async def stage_snapshot(self) -> stage_times.Snapshot:
        """The stage and store histograms of the worker's processes, summed (``stage_times.scrape_all``)."""
        return await asyncio.to_thread(stage_times.scrape_all, list(self.worker.web_ports.values()))

    def check_worker(self) -> None:
        if self.worker is not None:
            self.worker.check()
        for w in self.extra_workers:
            w.check()

    async def wait_zero(self, *, timeout: float, desc: str) -> CaughtUp:
        """Zero consumer lag for 1 s (polled every 0.25 s), with a progress bar."""
        peak = [0]
        with bar(desc=desc, unit="msg") as pb:
            def show(total: int) -> None:
                if total > peak[0]:
                    pb.total = peak[0] = total
                pb.n = peak[0] - total
                pb.set_postfix(lag=total, refresh=False)
                pb.refresh()

            return await self.monitor.wait_zero(timeout=timeout, settle=1.0, interval=0.25,
                                                check=self.check_worker, progress=show)

    def draw_tweets(self, deliveries: float) -> list[int]:
        """Authors (natural mix) whose tweets make about ``deliveries`` timeline rows."""
        g = self.graph
        out, total = [], 0
        while total < deliveries:
            a = g.authors(1, self.rng)[0]
            out.append(a)
            total += g.deliveries_of(a)
        return out

    async def burst(self, authors: list[int], desc: str, timeout: float = 3600) -> dict[str, Any]:
        """Publish one tweet per author at once and wait for zero lag."""
        t0 = time.time()
        await produce(self.settings, (self.factory.make(a) for a in authors))
        done = await self.wait_zero(timeout=timeout, desc=desc)
        return {"t0": t0, "zero_at": done.zero_at, "wall_s": done.zero_at - t0,
                "expected_deliveries": sum(self.graph.deliveries_of(a) for a in authors)}

    def cassandra_log(self) -> Path | None:
        """The local Cassandra node's system.log, when this checkout started it (else None)."""
        from localenv.services import services

        for svc in services(self.base):
            if svc.name == "cassandra" and svc.our_pid() is not None:
                return svc.log_files()[-1]
        return None

    def pids(self) -> ProcessSet:
        """The processes whose CPU a phase reads: the worker, this process and the servers."""
        from localenv.services import services

        single = worker_pids(self.worker)
        single["bench (load generator)"] = os.getpid()
        for n, w in enumerate(self.extra_workers, start=2):
            single.update(worker_pids(w, f"worker {n}"))
        tree = {}
        for svc in services(self.base):
            # Servers started by another checkout (reused) have no pid file here.
            pid = svc.our_pid() or pid_listening_on(svc.port)
            if pid is None:
                continue
            if svc.name == "postgres":
                tree["postgres (all backends)"] = pid
            else:
                single[svc.name] = pid
        return ProcessSet(single=single, tree=tree)
