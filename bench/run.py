"""The benchmark: one command, every figure, in an isolated namespace cleaned up afterwards.

    python -m bench.run [--scale small|full] [--seed N] [--out-dir DIR] [--no-latest]

Writes ``<out-dir>/run-<timestamp>.json`` and ``.md`` (default ``bench/results``) and
copies them to ``latest.json`` / ``latest.md`` (unless ``--no-latest``). The run gets
its own Kafka topics (prefix ``bench-<tag>-``, Faust's changelogs included), Cassandra
keyspace, Redis key prefix, consumer group, RocksDB folder and PostgreSQL schema
(``TL_POSTGRES_SCHEMA``), all removed at the end, whatever happens.

Phases (``bench/graph.py`` builds the seeded social graph):

1. raw ceilings of Redis, Cassandra and Kafka from Python (``bench/ceilings.py``);
2. the graph goes through the real pipeline (one Faust worker subprocess):
   ``user_active`` events (60% of users last seen 60 days ago), then every follow;
   every active user's timeline is then read once, so it is cached in Redis, as the
   design has it (pushes only touch cached timelines);
3. fanout throughput: a calibration burst, then a burst sized to keep the worker
   busy for ``throughput_s`` seconds; deliveries are counted in Cassandra
   (``user_timeline`` rows per user, before and after) and divided by the wall
   time from the first publish to zero consumer lag; CPU of every process is read
   from /proc over the same window;
4. fanout lag: tweets at a steady rate (half the measured capacity); for each
   tweet, sample followers' cached ``home:<id>`` sets are polled (ZSCORE, 10 ms)
   until the tweet is there; lag = seen - Kafka ack, by author size;
5. reads in-process (``sinks/reader.py``) on the same data, at 50 reads per
   tweet while tweets keep flowing: cache hits, misses (key dropped before the
   read, not timed) and hybrid readers (who follow every celebrity);
6. the worker's main thread under pyinstrument during a burst
   (``bench/profile_worker.py``); the worker is then stopped;
7. the pull model in PostgreSQL alone on the same graph: the projection's tweets
   plus synthetic ones COPYed up to ``pg_tweets`` rows; join and LATERAL queries;
8. POST /v1/tweets latency (``bench/post_bench.py``'s service and load generator);
9. HTTP reads via ``bench/read_bench.py`` (its own isolated world, subprocess).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from aiokafka.errors import KafkaError  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench import ceilings as ceilings_mod  # noqa: E402
from bench.graph import Graph, TweetFactory, generate, sample_followers, scaled_spec  # noqa: E402
from bench.post_bench import percentile  # noqa: E402
from bench.profile_worker import ProfiledWorker, summarize_session  # noqa: E402
from bench.sysstats import CpuWindow, ProcessSet, machine, pid_listening_on  # noqa: E402
from bench.workload import KEY_OF, TOPIC_OF, produce, topic_name  # noqa: E402
from ops.lag import pipeline_topics  # noqa: E402
from ops.schema import apply_cassandra, apply_postgres, create_topics_async, drop_namespace  # noqa: E402
from schemas import encode_key  # noqa: E402
from settings import Settings, get_settings  # noqa: E402
from sinks.cassandra import CassandraStore  # noqa: E402
from sinks.reader import HomeTimelineReader  # noqa: E402
from sinks.redis_timeline import RedisTimelines, member  # noqa: E402

RESULTS = REPO / "bench" / "results"

SCALES: dict[str, dict[str, Any]] = {
    "small": dict(
        partitions=4, calibrate_deliveries=1_500, throughput_s=6, lag_s=5, lag_floor_s=3, lag_loads=(0.25, 0.5), mixed_s=6,
        profile_s=4, pg_tweets=50_000, pg_queries=60, post_users=10, post_requests=300, post_concurrency=16,
        read_bench_args=["--requests", "80", "--concurrency", "1", "--readers", "5", "--normal", "20",
                         "--tweets", "10"],
        inactive_sample=100,
    ),
    "full": dict(
        partitions=8, calibrate_deliveries=40_000, throughput_s=75, lag_s=45, lag_floor_s=15, lag_loads=(0.25, 0.5), mixed_s=30,
        profile_s=20, pg_tweets=1_000_000, pg_queries=300, post_users=50, post_requests=3000,
        post_concurrency=32,
        read_bench_args=["--requests", "1500", "--concurrency", "1,8"],
        inactive_sample=500,
    ),
}
READ_LIMIT = 50
TARGETS = {
    "fanout_deliveries_per_s": 20_000,
    "fanout_share_of_slower_store_ceiling": 0.5,
    "lag_p99_s_below_10k_followers": 1.0,
    "cache_hit_p99_ms": 5.0,
    "cache_miss_p99_ms": 25.0,
    "hybrid10_minus_hit_p99_ms": 5.0,
    "pg_pull_p99_over_ours": 50.0,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bar(**kw: Any) -> tqdm:
    return tqdm(file=sys.stderr, mininterval=1.0, dynamic_ncols=True, leave=False, **kw)


def lat_ms(values_s: Iterable[float]) -> dict[str, Any]:
    ordered = sorted(values_s)
    if not ordered:
        return {"count": 0}

    def q(p: float) -> float:
        return round(percentile(ordered, p) * 1000, 2)

    return {"count": len(ordered), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
            "max": round(ordered[-1] * 1000, 2), "mean": round(statistics.fmean(ordered) * 1000, 2)}


# --- namespace ------------------------------------------------------------------------------------


def bench_settings(base: Settings, tag: str, workdir: Path, partitions: int, threshold: int,
                   hysteresis: int) -> Settings:
    """The run's own namespace (``Settings.isolated``: topics ``bench-<kind>-<tag>``, keyspace
    and schema ``bench_<tag>``, consumer group ``bench-<tag>``), the benchmark's celebrity
    numbers, and rate limits out of the way (their Redis round trips are still made)."""
    return base.isolated(
        "bench", tag, workdir, topic_partitions=partitions,
        celebrity_threshold=threshold, celebrity_hysteresis=hysteresis,
        post_rate_burst=10**9, post_rate_per_s=1e9, read_rate_burst=10**9, read_rate_per_s=1e9,
        signup_rate_burst=10**9, signup_rate_per_s=1e9, follow_rate_burst=10**9, follow_rate_per_s=1e9,
        token_lookup_rate_burst=10**9, token_lookup_rate_per_s=1e9,
    )


async def provision(settings: Settings) -> None:
    await asyncio.to_thread(apply_postgres, settings)  # creates the schema too
    await asyncio.to_thread(apply_cassandra, settings)
    await create_topics_async(settings, partitions=settings.topic_partitions)


async def cleanup(settings: Settings) -> dict[str, Any]:
    """Remove every trace of the run from the servers; returns what was removed."""
    done = await drop_namespace(settings)
    done["note"] = "the consumer group bench-<tag> is left to Kafka's offset retention (aiokafka cannot delete groups)"
    return done


# --- Kafka helpers ------------------------------------------------------------------------------


class LagMonitor:
    """Consumer lag of the run's group on the pipeline topics, with long-lived clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = pipeline_topics(settings)
        self.admin: AIOKafkaAdminClient | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.tps: list[TopicPartition] = []

    async def start(self) -> "LagMonitor":
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await self.admin.start()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False)
        await self.consumer.start()
        self.tps = await self._partitions(self.topics)
        return self

    async def _partitions(self, topics: list[str]) -> list[TopicPartition]:
        cluster = await self.consumer._client.fetch_all_metadata()  # noqa: SLF001 - as in ops.lag
        out = []
        for t in topics:
            out.extend(TopicPartition(t, p) for p in sorted(cluster.partitions_for_topic(t) or ()))
        return out

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.admin is not None:
            await self.admin.close()

    async def lag(self) -> dict[str, int]:
        committed = await self.admin.list_consumer_group_offsets(self.settings.app_id)
        ends = await self.consumer.end_offsets(self.tps)
        out = {t: 0 for t in self.topics}
        for tp in self.tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            out[tp.topic] += max(0, ends[tp] - done)
        return out

    async def end_offsets(self, topics: list[str]) -> dict[str, int]:
        tps = await self._partitions(topics)
        ends = await self.consumer.end_offsets(tps) if tps else {}
        out = {t: 0 for t in topics}
        for tp, off in ends.items():
            out[tp.topic] += off
        return out

    async def changelog_topics(self) -> list[str]:
        topics = await self.admin.list_topics()
        return sorted(t for t in topics if t.startswith(self.settings.app_id + "-") and t.endswith("-changelog"))

    async def wait_zero(self, *, timeout: float, check: Callable[[], None] | None = None, settle: float = 1.0,
                        desc: str = "consumer lag", interval: float = 0.25) -> dict[str, Any]:
        """Poll until every pipeline topic has zero lag for ``settle`` s; returns the first zero time."""
        began = time.time()
        first_zero: float | None = None
        peak = 0
        samples = []
        with bar(desc=desc, unit="msg") as pb:
            while time.time() - began < timeout:
                if check is not None:
                    check()
                try:
                    lag = await self.lag()
                except KafkaError:
                    await asyncio.sleep(interval)
                    continue
                total = sum(lag.values())
                now = time.time()
                samples.append((round(now - began, 2), total))
                if total > peak:
                    pb.total = total
                    peak = total
                pb.n = peak - total
                pb.set_postfix(lag=total, refresh=False)
                pb.refresh()
                if total == 0:
                    if first_zero is None:
                        first_zero = now
                    elif now - first_zero >= settle:
                        return {"zero_at": first_zero, "peak_lag": peak, "waited_s": round(first_zero - began, 2),
                                "samples": samples}
                else:
                    first_zero = None
                await asyncio.sleep(interval)
        raise TimeoutError(f"pipeline still behind after {timeout:.0f}s: lag {lag}")


class Publisher:
    """An acks=all producer that records when Kafka acknowledged each event."""

    def __init__(self, settings: Settings, linger_ms: int = 0) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
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


# --- stores helpers -------------------------------------------------------------------------------


async def open_reader(settings: Settings) -> tuple[HomeTimelineReader, CassandraStore, Redis]:
    store = await asyncio.to_thread(CassandraStore.open, settings)
    redis = Redis.from_url(settings.redis_url)
    timelines = RedisTimelines(redis, prefix=settings.redis_prefix, cap=settings.timeline_cap,
                               ttl_s=settings.timeline_ttl_s)
    return HomeTimelineReader(settings, store, timelines), store, redis


async def count_rows(store: CassandraStore, user_ids: list[int]) -> dict[int, int]:
    name = "bench_count_user_tl"
    if name not in store._stmts:  # noqa: SLF001 - a bench-only statement on the store's session
        store._stmts[name] = await asyncio.to_thread(  # noqa: SLF001
            store.session.prepare, f"SELECT COUNT(*) AS n FROM {store.keyspace}.user_timeline WHERE user_id = ?")
    out: dict[int, int] = {}
    chunk = 2000
    for start in range(0, len(user_ids), chunk):
        part = user_ids[start:start + chunk]
        rows = await store.query_many(name, [(u,) for u in part])
        out.update((u, r[0].n if r else 0) for u, r in zip(part, rows))
    return out


# --- the run ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = SCALES[args.scale]
        self.stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.tag = f"{self.stamp.lower()[:15]}{uuid.uuid4().hex[:4]}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-run-{self.tag}-"))
        self.base = get_settings()
        spec, hysteresis = scaled_spec(args.scale)
        self.spec = spec
        self.settings = bench_settings(self.base, self.tag, self.workdir, self.cfg["partitions"],
                                       spec.celebrity_threshold, hysteresis)
        self.rng = random.Random(args.seed)
        self.graph: Graph | None = None
        self.worker: ProfiledWorker | None = None
        self.monitor: LagMonitor | None = None
        self.factory: TweetFactory | None = None
        self.report: dict[str, Any] = {}
        self.capacity: float | None = None  # deliveries/s measured
        self.out_dir: Path = args.out_dir
        self.phase_times: dict[str, float] = {}

    # --- bookkeeping ---------------------------------------------------------------------------
    async def section(self, name: str, coro_fn: Callable[[], Any]) -> None:
        if name in self.args.skip:
            self.report[name] = {"skipped": True}
            return
        log(f"--- {name}")
        began = time.monotonic()
        try:
            self.report[name] = await coro_fn()
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            log(f"{name} failed: {exc!r}")
            traceback.print_exc()
            self.report[name] = {"error": repr(exc)}
            if self.worker is not None and not self.worker.alive():
                self.report[name]["worker_log_tail"] = self.worker.log_tail(30)
        self.phase_times[name] = round(time.monotonic() - began, 1)

    def check_worker(self) -> None:
        if self.worker is not None:
            self.worker.check()

    # --- phases --------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        began = time.monotonic()
        self.report["meta"] = {
            "timestamp": self.stamp, "scale": self.args.scale, "seed": self.args.seed, "tag": self.tag,
            "machine": machine(), "git_commit": _git_rev(),
            "note": ("Kafka, Cassandra, Redis, PostgreSQL, the worker and this load generator share this machine; "
                     "other people's test runs may share it too (see loadavg and outside_these_processes_cpu_s)."),
        }
        try:
            await provision(self.settings)
            self.graph = generate(self.spec, self.args.seed)
            self.factory = TweetFactory(self.graph)
            self.report["dataset"] = {"graph": self.graph.describe(), "partitions": self.settings.topic_partitions,
                                      "celebrity_hysteresis": self.settings.celebrity_hysteresis,
                                      "inactive_after_days": self.settings.inactive_after_ms // 86_400_000,
                                      "timeline_cap": self.settings.timeline_cap}
            await self.section("ceilings", self.ceilings)
            await self.section("graph_load", self.load_graph)
            if "error" not in self.report.get("graph_load", {}):
                await self.section("fanout_throughput", self.throughput)
                await self.section("fanout_lag", self.lag_phase)
                await self.section("reads_inprocess", self.mixed_reads)
                await self.section("profile", self.profile)
            await self.stop_worker()
            await self.section("pg_pull_baseline", self.pg_baseline)
            await self.section("write_latency", self.post_latency)
            await self.section("reads_http", self.http_reads)
        finally:
            await self.stop_worker()
            if self.monitor is not None:
                await self.monitor.stop()
            self.report["cleanup"] = await cleanup(self.settings)
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.report["meta"]["duration_s"] = round(time.monotonic() - began, 1)
        self.report["meta"]["phase_s"] = self.phase_times
        self.report["meta"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        self.report["targets"] = evaluate_targets(self.report)
        return self.report

    async def stop_worker(self) -> None:
        if self.worker is not None:
            log_path = self.worker.log_path
            await asyncio.to_thread(self.worker.stop)
            keep = self.out_dir / f"run-{self.stamp}.worker.log"
            try:
                keep.write_text("\n".join(log_path.read_text(errors="replace").splitlines()[-400:]) + "\n")
            except OSError:
                pass
            self.worker = None

    async def ceilings(self) -> dict[str, Any]:
        return await ceilings_mod.measure_all(self.settings, self.args.scale, log=log)

    async def load_graph(self) -> dict[str, Any]:
        g = self.graph
        assert g is not None
        prefix = self.workdir / "profile"
        self.worker = ProfiledWorker(self.settings, self.workdir / "worker.log", prefix).start()
        self.monitor = await LagMonitor(self.settings).start()
        now = int(time.time() * 1000)
        t0 = time.time()
        await produce(self.settings, g.activity_events(now))
        started = await self.monitor.wait_zero(timeout=300, check=self.check_worker, desc="worker start + activity")
        follows = list(g.follow_events(now))
        t1 = time.time()
        await produce(self.settings, follows)
        done = await self.monitor.wait_zero(timeout=7200, check=self.check_worker, desc="follows")
        follow_s = done["zero_at"] - t1
        # Cache every active user's timeline (the design keeps active users' timelines hot).
        reader, store, redis = await open_reader(self.settings)
        try:
            active = [g.ids[i] for i in range(g.n) if g.active[i]]
            sem = asyncio.Semaphore(16)
            with bar(desc="warm caches", total=len(active), unit="user") as pb:
                async def warm(uid: int) -> None:
                    async with sem:
                        await reader.page(uid, limit=READ_LIMIT)
                    pb.update(1)
                await asyncio.gather(*(warm(u) for u in active))
            async with redis.pipeline(transaction=False) as pipe:
                for u in active:
                    pipe.exists(reader.timelines.key(u))
                cached = sum(await pipe.execute())
        finally:
            await redis.aclose()
            await asyncio.to_thread(store.close)
        return {
            "worker_start_and_activity_s": round(started["zero_at"] - t0, 1),
            "activity_events": g.n,
            "follow_events": len(follows),
            "follows_s": round(follow_s, 1),
            "follows_per_s": round(len(follows) / follow_s, 1),
            "active_users_cached": cached,
            "active_users": len(active),
        }

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
        t0 = time.time()
        await produce(self.settings, (self.factory.make(a) for a in authors))
        published = time.time()
        done = await self.monitor.wait_zero(timeout=timeout, check=self.check_worker, desc=desc)
        expected = sum(self.graph.deliveries_of(a) for a in authors)
        wall = done["zero_at"] - t0
        return {"t0": t0, "zero_at": done["zero_at"], "wall_s": wall, "publish_s": published - t0,
                "expected_deliveries": expected, "peak_lag": done["peak_lag"], "lag_samples": done["samples"]}

    def pids(self) -> ProcessSet:
        from ops.services import services

        single = {"worker": self.worker.proc.pid, "bench (load generator)": os.getpid()}
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

    async def throughput(self) -> dict[str, Any]:
        g = self.graph
        cfg = self.cfg
        cal = await self.burst(self.draw_tweets(cfg["calibrate_deliveries"]), "calibration")
        cal_rate = cal["expected_deliveries"] / cal["wall_s"]
        log(f"calibration: {cal['expected_deliveries']} deliveries in {cal['wall_s']:.1f} s = {cal_rate:.0f}/s")
        users = [i for i in range(g.n) if g.active[i]]
        inactive = [i for i in range(g.n) if not g.active[i]]
        users += random.Random(self.args.seed + 5).sample(inactive, min(cfg["inactive_sample"], len(inactive)))
        reader, store, redis = await open_reader(self.settings)
        try:
            before = await count_rows(store, [g.ids[i] for i in users])
            changelogs = await self.monitor.changelog_topics()
            offsets_before = await self.monitor.end_offsets(
                [self.settings.topic_tweets, self.settings.topic_deliveries, *changelogs])
            window = CpuWindow(self.pids(), threads_of=self.worker.proc.pid).start()
            run = await self.sustained(cfg["throughput_s"], cal_rate)
            cpu = window.stop()
            authors = run["authors"]
            offsets_after = await self.monitor.end_offsets(
                [self.settings.topic_tweets, self.settings.topic_deliveries, *changelogs])
            after = await count_rows(store, [g.ids[i] for i in users])
        finally:
            await redis.aclose()
            await asyncio.to_thread(store.close)
        delivered = sum(after[g.ids[i]] - before[g.ids[i]] for i in users)
        to_inactive = sum(after[g.ids[i]] - before[g.ids[i]] for i in users if not g.active[i])
        rate = delivered / run["wall_s"]
        self.capacity = rate
        msgs = {t: offsets_after[t] - offsets_before[t] for t in offsets_before}
        changelog_msgs = sum(v for t, v in msgs.items() if t.endswith("-changelog"))
        consumed = msgs[self.settings.topic_tweets] + msgs[self.settings.topic_deliveries]
        self.cpu_window = cpu
        self.throughput_authors = authors
        self.report["write_savings"] = self.savings(authors, delivered)
        ours = sum(v for k, v in cpu["cpu_s"].items() if k != "bench (load generator)")
        per_delivery = ours / delivered if delivered else None
        nproc = os.cpu_count() or 1
        self.report["cpu_per_1000_deliveries"] = {
            "window": "the fanout throughput phase (first publish to zero lag)",
            "deliveries": delivered,
            "pipeline_cpu_s_per_1000_deliveries": round(per_delivery * 1000, 3) if per_delivery else None,
            "machine_bound_deliveries_per_s": round(nproc / per_delivery) if per_delivery else None,
            "cores_needed_for_20000_per_s": round(20_000 * per_delivery, 1) if per_delivery else None,
            "estimate": "worker + Kafka + Cassandra + Redis + PostgreSQL CPU per delivery; machine_bound = all "
                        f"{nproc} cores busy with nothing but the pipeline, at this efficiency",
            "cpu_s_per_1000_deliveries": {k: round(v / delivered * 1000, 3) for k, v in cpu["cpu_s"].items()}
            if delivered else {},
            **cpu,
        }
        return {
            "deliveries_per_s": round(rate, 1),
            "deliveries_counted_in_cassandra": delivered,
            "deliveries_expected_from_graph": run["expected_deliveries"],
            "rows_written_to_inactive_sample": to_inactive,
            "tweets": len(authors),
            "tweets_per_s": round(len(authors) / run["wall_s"], 1),
            "wall_s_first_publish_to_zero_lag": round(run["wall_s"], 1),
            "feeding_s": round(run["publish_s"], 1),
            "feeding": f"{run['chunks']} chunks of ~2 s of work, published whenever fewer than "
                       f"{run['low_water_msgs']} messages were queued (so the worker never ran dry), "
                       "then a drain to zero lag",
            "peak_consumer_lag_msgs": run["peak_lag"],
            "end_resolution": "zero lag polled every 0.25 s; Faust commits offsets every 1 s, "
                              "so the wall time is up to ~1.2 s long (rate slightly understated)",
            "kafka_messages_consumed": consumed,
            "kafka_messages_consumed_per_s": round(consumed / run["wall_s"], 1),
            "delivery_messages": msgs[self.settings.topic_deliveries],
            "table_changelog_messages": changelog_msgs,
            "changelog_messages_per_1000_deliveries": round(changelog_msgs / delivered * 1000, 1) if delivered else None,
            "calibration": {"deliveries": cal["expected_deliveries"], "wall_s": round(cal["wall_s"], 1),
                            "deliveries_per_s": round(cal_rate, 1)},
            "redis_pushes": "every active user's timeline is cached, so each delivery is a Cassandra row and a Redis push",
            "lag_samples": run["lag_samples"][:: max(1, len(run["lag_samples"]) // 60)],
        }

    async def sustained(self, seconds: float, rate: float) -> dict[str, Any]:
        """Keep the pipeline saturated for ``seconds``: chunks of ~2 s of work are published whenever
        fewer than two chunks are queued (consumer lag), then wait for zero lag."""
        g = self.graph
        chunk = max(1.0, rate * 2.0)
        low_water = max(20, 2 * int(chunk / max(1.0, g.expected_deliveries_per_tweet())))
        pub = await Publisher(self.settings, linger_ms=5).start()
        authors: list[int] = []
        feed_samples: list[tuple[float, int]] = []
        chunks = 0
        t0 = time.time()

        async def publish() -> None:
            nonlocal chunks
            batch = self.draw_tweets(chunk)
            futures = [await pub.send(self.factory.make(a)) for a in batch]
            await asyncio.gather(*futures)
            authors.extend(batch)
            chunks += 1

        try:
            for _ in range(3):
                await publish()
            with bar(desc="fanout throughput (sustained)", total=int(seconds), unit="s") as pb:
                while time.time() - t0 < seconds:
                    self.check_worker()
                    try:
                        lag = await self.monitor.lag()
                    except KafkaError:
                        lag = {}
                    queued = lag.get(self.settings.topic_tweets, 0) + lag.get(self.settings.topic_deliveries, 0)
                    feed_samples.append((round(time.time() - t0, 1), sum(lag.values())))
                    if queued < low_water:
                        await publish()
                    pb.n = int(min(seconds, time.time() - t0))
                    pb.set_postfix(queued=queued, chunks=chunks, refresh=False)
                    pb.refresh()
                    await asyncio.sleep(0.25)
            feeding_s = time.time() - t0
        finally:
            await pub.stop()
        done = await self.monitor.wait_zero(timeout=3600, check=self.check_worker, desc="drain")
        return {"t0": t0, "zero_at": done["zero_at"], "wall_s": done["zero_at"] - t0, "publish_s": feeding_s,
                "expected_deliveries": sum(g.deliveries_of(a) for a in authors), "peak_lag": done["peak_lag"],
                "lag_samples": feed_samples + [(round(feeding_s + t, 1), n) for t, n in done["samples"]],
                "authors": authors, "chunks": chunks,
                "low_water_msgs": low_water}

    def savings(self, authors: list[int], delivered: int) -> dict[str, Any]:
        g = self.graph
        naive = sum(g.naive_of(a) for a in authors)
        push_all = sum(g.push_all_of(a) for a in authors)
        celeb = sum(1 for a in authors if g.celebrity[a])
        return {
            "window": "tweets of the fanout throughput phase",
            "tweets": len(authors),
            "celebrity_tweets": celeb,
            "rows_written": delivered,
            "naive_push_to_every_follower": naive,
            "push_without_activity_rule": push_all,
            "saved_by_skipping_inactive": round(1 - delivered / push_all, 3) if push_all else None,
            "saved_vs_naive (inactive + celebrity rules)": round(1 - delivered / naive, 3) if naive else None,
            "inactive_share_of_users": round(1 - sum(g.active) / g.n, 3),
            "note": "the saving equals the inactive share among the followers of the tweets' authors (weighted by "
                    "tweets); the graph's heavy readers, who follow ~150 accounts each, are all active, so that "
                    "share is below the 60% of users",
            "design_claim": "60% fewer writes at 60% inactive (section 11)",
        }

    async def probe_stream(self, rate: float, duration: float, desc: str) -> dict[str, Any]:
        """Tweets at ``rate``/s for ``duration`` s (natural author mix); each is probed in sampled
        followers' cached timelines until seen. Returns samples (class, lag from ack, from created_at)."""
        g = self.graph
        probes_per_class = {"small (<100 followers)": 2, "medium (100-999)": 3}
        samples: list[tuple[str, float, float]] = []
        sent_at: list[tuple[float, float]] = []  # (s since the run began, lag) per sample
        run_began = time.time()
        pending: list[dict] = []
        timeouts: dict[str, int] = {}
        redis = Redis.from_url(self.settings.redis_url)
        pub = await Publisher(self.settings).start()
        stop = asyncio.Event()
        rng = random.Random(self.args.seed + 11 + int(rate * 1000))
        threshold = self.settings.celebrity_threshold

        polls = [0, 0.0]  # ZSCOREs sent, the largest interval used

        async def poll() -> None:
            # At most ~10,000 ZSCOREs a second: when the pipeline falls behind and probes pile up,
            # the poller must not take the CPU the pipeline needs (resolution degrades instead).
            while not stop.is_set() or pending:
                interval = max(0.01, len(pending) / 10_000)
                polls[1] = max(polls[1], interval)
                if pending:
                    polls[0] += len(pending)
                    batch = list(pending)
                    async with redis.pipeline(transaction=False) as pipe:
                        for p in batch:
                            pipe.zscore(p["key"], p["member"])
                        scores = await pipe.execute()
                    now = time.time()
                    for p, score in zip(batch, scores):
                        if score is not None:
                            ack = p["ack"][0] if p["ack"][0] is not None else p["sent"]
                            samples.append((p["cls"], max(0.0, now - ack), max(0.0, now - p["created"] / 1000)))
                            sent_at.append((p["sent"] - run_began, now - ack))
                            pending.remove(p)
                        elif now - p["sent"] > 60:
                            timeouts[p["cls"]] = timeouts.get(p["cls"], 0) + 1
                            pending.remove(p)
                await asyncio.sleep(interval)

        async def one(i: int) -> None:
            a = g.authors(1, rng)[0]
            ev = self.factory.make(a)
            cls = g.size_class(a, threshold)
            ack: list[float | None] = [None]
            sent = time.time()
            await pub.send(ev, on_ack=lambda t: ack.__setitem__(0, t))
            if g.celebrity[a]:
                return
            for f in sample_followers(g, a, probes_per_class.get(cls, 8), rng):
                pending.append({"key": f"{self.settings.redis_prefix}home:{g.ids[f]}",
                                "member": member(ev["tweet_id"], ev["author_id"]), "cls": cls,
                                "created": ev["created_at"], "sent": sent, "ack": ack})

        lag_peak = 0

        async def watch() -> None:
            nonlocal lag_peak
            while not stop.is_set():
                try:
                    lag_peak = max(lag_peak, sum((await self.monitor.lag()).values()))
                except KafkaError:
                    pass
                await asyncio.sleep(1.0)

        window = CpuWindow(self.pids()).start()
        poller = asyncio.create_task(poll())
        watcher = asyncio.create_task(watch())
        try:
            with bar(desc=desc, total=int(duration), unit="s") as pb:
                async def ticking(i: int) -> None:
                    await one(i)
                    if i % 10 == 0:
                        pb.n = int(min(duration, i / rate))
                        pb.refresh()
                sent = await paced(rate, duration, ticking)
            await pub.producer.flush()
            stop.set()
            await asyncio.wait_for(poller, timeout=90)
        finally:
            stop.set()
            watcher.cancel()
            poller.cancel()
            await pub.stop()
            await redis.aclose()
        cpu = window.stop()
        self.check_worker()
        worst: dict[int, float] = {}
        for at, lag in sent_at:
            worst[int(at)] = max(worst.get(int(at), 0.0), lag)
        worst_seconds = [{"second": k, "max_lag_ms": round(v * 1000, 1)}
                         for k, v in sorted(worst.items(), key=lambda kv: -kv[1])[:5]]
        worker_events = self.worker_log_events(run_began, time.time())
        by_class: dict[str, Any] = {}
        for cls in sorted({c for c, _, _ in samples} | set(timeouts)):
            by_class[cls] = {"from_kafka_ack_ms": lat_ms(s for c, s, _ in samples if c == cls),
                             "from_created_at_ms": lat_ms(s for c, _, s in samples if c == cls),
                             "not_seen_within_60s": timeouts.get(cls, 0)}
        return {"tweet_rate_per_s": round(rate, 2), "duration_s": duration, "tweets": sent,
                "offered_deliveries_per_s": round(rate * self.graph.expected_deliveries_per_tweet(), 1),
                "all_pushed_authors_from_kafka_ack_ms": lat_ms(s for _, s, _ in samples),
                "by_author_size": by_class, "peak_consumer_lag_msgs": lag_peak,
                "zscore_polls": polls[0], "longest_poll_interval_ms": round(polls[1] * 1000, 1),
                "worst_seconds_by_send_time": worst_seconds, "worker_log_warnings": worker_events,
                "machine_busy_share": cpu["machine_busy_share"], "cpu_s": cpu["cpu_s"],
                "outside_these_processes_cpu_s": cpu["outside_these_processes_cpu_s"]}

    def worker_log_events(self, since: float, until: float) -> dict[str, Any]:
        """Warnings and errors the worker logged between two wall-clock times (its log is local time)."""
        out: dict[str, Any] = {"producer_buffer_full": 0, "lines": []}
        if self.worker is None:
            return out
        lo = datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M:%S")
        hi = datetime.fromtimestamp(until + 1).strftime("%Y-%m-%d %H:%M:%S")
        try:
            lines = self.worker.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return out
        for line in lines:
            if not line.startswith("[") or not ("WARNING" in line or "ERROR" in line):
                continue
            stamp = line[1:20]
            if not lo <= stamp <= hi:
                continue
            if "producer buffer full" in line:
                out["producer_buffer_full"] += 1
            elif len(out["lines"]) < 8:
                out["lines"].append(line[:200])
        return out

    async def lag_phase(self) -> dict[str, Any]:
        g = self.graph
        cfg = self.cfg
        capacity = self.capacity or 1000.0
        mean_d = g.expected_deliveries_per_tweet()
        runs = []
        floor = await self.probe_stream(2.0, cfg["lag_floor_s"], "fanout lag, 2 tweets/s")
        floor["load"] = "2 tweets/s (nearly idle)"
        runs.append(floor)
        for share in cfg["lag_loads"]:
            rate = max(1.0, share * capacity / mean_d)
            run = await self.probe_stream(rate, cfg["lag_s"], f"fanout lag, {share:.0%} of capacity")
            run["load"] = f"{share:.0%} of the burst capacity"
            runs.append(run)
            # Let a backlog drain before the next rate.
            await self.monitor.wait_zero(timeout=900, check=self.check_worker, desc="drain")
        return {
            "rate_basis": f"shares of the fanout capacity measured in the burst ({capacity:.0f} deliveries/s) "
                          f"at {mean_d:.1f} deliveries per tweet; tweets one by one (acks=all, linger 0), "
                          "authors drawn with the workload's mix",
            "probe": "ZSCORE of the tweet's member in sampled active followers' cached home:<id> (all active "
                     "users' timelines are cached), polled every 10 ms (longer when many probes are pending: "
                     "at most ~10,000 ZSCORE/s); one sample per (tweet, follower); lag from the Kafka ack",
            "runs": runs,
        }

    async def mixed_reads(self) -> dict[str, Any]:
        g = self.graph
        cfg = self.cfg
        reader, store, redis = await open_reader(self.settings)
        pub = await Publisher(self.settings).start()
        try:
            celebs = [i for i in range(g.n) if g.celebrity[i]]
            heavy = set(g.heavy_pure) | set(g.heavy_hybrid)
            fol = g.following()
            typical_pool = [i for i in range(g.n) if g.active[i] and g.pure[i] and i not in heavy and fol[i]]
            typical = random.Random(self.args.seed + 41).sample(typical_pool, min(100, len(typical_pool)))
            hit = [g.ids[i] for i in g.heavy_pure]
            hybrid = [g.ids[i] for i in g.heavy_hybrid]
            self.readers = {"hit": hit, "hybrid": hybrid, "typical": [g.ids[i] for i in typical]}
            groups = {"cache_hit": (hit[0::2], False), "cache_miss": (hit[1::2], True),
                      f"hybrid_{len(celebs)}_celebrities": (hybrid, False),
                      "typical_user_cache_hit": (self.readers["typical"], False)}
            results: dict[str, list[float]] = {k: [] for k in groups}
            sources: dict[str, dict[str, int]] = {k: {} for k in groups}
            sizes: dict[str, list[int]] = {k: [] for k in groups}

            async def read(name: str, i: int) -> None:
                users, drop = groups[name]
                uid = users[i % len(users)]
                if drop:
                    await redis.delete(reader.timelines.key(uid))
                t = time.perf_counter()
                page = await reader.page(uid, limit=READ_LIMIT)
                results[name].append(time.perf_counter() - t)
                sources[name][page.source] = sources[name].get(page.source, 0) + 1
                sizes[name].append(len(page.tweets))

            # Capacity of in-process reads (closed loop, 4 in flight, 2 s) to size the mix.
            names = list(groups)
            n_done = 0
            t_end = time.perf_counter() + 2.0

            async def closed() -> None:
                nonlocal n_done
                while time.perf_counter() < t_end:
                    await read(names[n_done % len(names)], n_done)
                    n_done += 1
            await asyncio.gather(*(closed() for _ in range(4)))
            closed_rate = n_done / 2.0
            for k in results:
                results[k].clear()
                sizes[k].clear()
                sources[k].clear()
            read_rate = max(10.0, 0.4 * closed_rate)
            tweet_rate = read_rate / 50
            sem = asyncio.Semaphore(16)
            inflight: list[asyncio.Task] = []
            late = 0

            async def bounded(name: str, i: int) -> None:
                async with sem:
                    await read(name, i)

            async def issue(i: int) -> None:
                nonlocal late
                if sem.locked():
                    late += 1
                inflight.append(asyncio.create_task(bounded(names[i % len(names)], i // len(names))))

            tweets_sent = 0
            rng = random.Random(self.args.seed + 23)

            async def tweet(i: int) -> None:
                nonlocal tweets_sent
                await pub.send(self.factory.make(g.authors(1, rng)[0]))
                tweets_sent += 1

            window = CpuWindow(self.pids()).start()
            began = time.perf_counter()
            reads_issued, _ = await asyncio.gather(paced(read_rate, cfg["mixed_s"], issue),
                                                   paced(tweet_rate, cfg["mixed_s"], tweet))
            await asyncio.gather(*inflight)
            elapsed = time.perf_counter() - began
            cpu = window.stop()
        finally:
            await pub.stop()
            await redis.aclose()
            await asyncio.to_thread(store.close)
        return {
            "how": "HomeTimelineReader.page(limit=50) in this process (no HTTP), paced open loop, <=16 in flight; "
                   "tweets published at 1/50 of the read rate meanwhile; readers: the graph's heavy readers "
                   "(following ~150 accounts; cache_hit and cache_miss are disjoint halves) and typical users",
            "closed_loop_capacity_reads_per_s": round(closed_rate, 1),
            "read_rate_per_s": round(reads_issued / elapsed, 1),
            "tweet_rate_per_s": round(tweets_sent / elapsed, 2),
            "read_write_ratio": round(reads_issued / max(1, tweets_sent), 1),
            "duration_s": round(elapsed, 1),
            "reads_started_late (all 16 slots busy)": late,
            "scenarios": {
                k: {"latency": lat_ms(v), "sources": sources[k],
                    "mean_tweets_per_page": round(statistics.fmean(sizes[k]), 1) if sizes[k] else 0,
                    "readers": len(groups[k][0])}
                for k, v in results.items()
            },
            "machine_busy_share": cpu["machine_busy_share"],
        }

    async def profile(self) -> dict[str, Any]:
        cfg = self.cfg
        capacity = self.capacity or 1000.0
        authors = self.draw_tweets(capacity * cfg["profile_s"])
        window = CpuWindow(self.pids(), threads_of=self.worker.proc.pid)
        self.worker.profile_start()
        window.start()
        run = await self.burst(authors, "profiled burst")
        cpu = window.stop()
        ok = await asyncio.to_thread(self.worker.profile_stop)
        if not ok:
            raise RuntimeError("the profiler did not write its report")
        prefix = Path(str(self.worker.prefix))
        text_out = self.out_dir / f"run-{self.stamp}.profile.txt"
        shutil.copyfile(prefix.with_suffix(".txt"), text_out)
        summary = await asyncio.to_thread(summarize_session, prefix.with_suffix(".pyisession"))
        threads_file = prefix.with_suffix(".threads.json")
        summary["all_threads_cpu_sampler"] = json.loads(threads_file.read_text()) if threads_file.exists() else None
        rate = run["expected_deliveries"] / run["wall_s"]
        return {
            "how": "pyinstrument (1 ms sampling, wall clock, main thread only) started and stopped by signals "
                   "around a burst; bench/profile_worker.py",
            "deliveries": run["expected_deliveries"],
            "wall_s": round(run["wall_s"], 1),
            "deliveries_per_s_while_profiled": round(rate, 1),
            "profiler_slowdown": round(capacity / rate, 2) if rate else None,
            "process_cpu_s": cpu["cpu_s"],
            "worker_threads_cpu_s": cpu.get("worker_threads_cpu_s"),
            "text_report": str(text_out.relative_to(REPO)) if text_out.is_relative_to(REPO) else str(text_out),
            **summary,
        }

    async def pg_baseline(self) -> dict[str, Any]:
        import psycopg

        g = self.graph
        cfg = self.cfg
        target = cfg["pg_tweets"]
        readers = getattr(self, "readers", None) or {
            "hit": [g.ids[i] for i in g.heavy_pure], "hybrid": [g.ids[i] for i in g.heavy_hybrid],
            "typical": [g.ids[i] for i in range(g.n) if g.pure[i] and g.active[i]][:100]}
        async with await psycopg.AsyncConnection.connect(self.settings.postgres_dsn, autocommit=True,
                                                         **self.settings.postgres_kwargs()) as conn:
            projected = (await (await conn.execute("SELECT count(*) FROM tweets")).fetchone())[0]
            follows = (await (await conn.execute("SELECT count(*) FROM follows")).fetchone())[0]
            add = max(0, target - projected)
            t0 = time.monotonic()
            await self.copy_tweets(conn, add)
            copy_s = time.monotonic() - t0
            t0 = time.monotonic()
            await conn.execute("VACUUM ANALYZE tweets")
            await conn.execute("VACUUM ANALYZE follows")
            analyze_s = time.monotonic() - t0
            total = (await (await conn.execute("SELECT count(*) FROM tweets")).fetchone())[0]
            queries = {
                "join": (
                    "SELECT t.tweet_id, t.author_id, t.text, t.created_at FROM tweets t"
                    " JOIN follows f ON f.followee_id = t.author_id"
                    " WHERE f.follower_id = %s AND t.deleted_at IS NULL"
                    " ORDER BY t.tweet_id DESC LIMIT 50"),
                "lateral": (
                    "SELECT x.tweet_id, x.author_id, x.text, x.created_at FROM follows f"
                    " CROSS JOIN LATERAL (SELECT t.tweet_id, t.author_id, t.text, t.created_at FROM tweets t"
                    "   WHERE t.author_id = f.followee_id AND t.deleted_at IS NULL"
                    "   ORDER BY t.tweet_id DESC LIMIT 50) x"
                    " WHERE f.follower_id = %s ORDER BY x.tweet_id DESC LIMIT 50"),
            }
            out: dict[str, Any] = {}
            plans: dict[str, str] = {}
            n = cfg["pg_queries"]
            for qname, sql in queries.items():
                for group, users in readers.items():
                    if not users:
                        continue
                    for u in users[:20]:  # warm the cache and the prepared statement
                        await (await conn.execute(sql, (u,), prepare=True)).fetchall()
                    times = []
                    rows = []
                    began = time.perf_counter()
                    for i in range(n):
                        t = time.perf_counter()
                        cur = await conn.execute(sql, (users[i % len(users)],), prepare=True)
                        rows.append(len(await cur.fetchall()))
                        times.append(time.perf_counter() - t)
                    elapsed = time.perf_counter() - began
                    out[f"{qname}/{group}"] = {"latency": lat_ms(times), "queries_per_s": round(n / elapsed, 1),
                                               "mean_rows": round(statistics.fmean(rows), 1)}
                for group in ("hit", "typical"):
                    if readers.get(group):
                        cur = await conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, (readers[group][0],))
                        plans[f"{qname}/{group}"] = compact_plan([r[0] for r in await cur.fetchall()])
            sizes = await (await conn.execute(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(i.inhrelid))), count(*),"
                " pg_size_pretty(pg_total_relation_size('follows'))"
                " FROM pg_inherits i WHERE i.inhparent = 'tweets'::regclass")).fetchone()
        ours = await self.quiet_reads(readers, n)
        fol = g.following()
        idx = {uid: i for i, uid in enumerate(g.ids)}

        def mean_following(users: list[int]) -> float:
            return round(statistics.fmean(len(fol[idx[u]]) for u in users), 1) if users else 0.0

        return {
            "tweets_rows": total,
            "tweets_from_pipeline_projection": projected,
            "tweets_copied": add,
            "copy_s": round(copy_s, 1),
            "vacuum_analyze_s": round(analyze_s, 1),
            "follows_rows": follows,
            "table_sizes": {"tweets (all partitions, with indexes)": sizes[0], "follows": sizes[2]},
            "tweets_partitions": sizes[1],
            "indexes": "ops/schema.sql as is: tweets range-partitioned by month on the Snowflake id, PK (tweet_id), "
                       "(author_id, tweet_id DESC); follows PK (follower_id, followee_id), (followee_id, follower_id)",
            "readers": {k: {"users": len(v), "mean_following": mean_following(v)} for k, v in readers.items()},
            "reader_groups": "hit: heavy readers following ~150 accounts and no celebrity; hybrid: heavy readers "
                             "following ~150 accounts and every celebrity; typical: random active users of the graph",
            "how": "psycopg in this process, prepared, one query at a time (no HTTP); the worker is stopped",
            "queries": out,
            "ours_in_process_same_conditions": ours,
            "plans": plans,
        }

    async def quiet_reads(self, readers: dict[str, list[int]], n: int) -> dict[str, Any]:
        """Our reads under the PostgreSQL baseline's conditions: in-process, one at a time, worker stopped."""
        reader, store, redis = await open_reader(self.settings)
        out: dict[str, Any] = {}
        try:
            hit = readers.get("hit") or []
            cases = {"cache_hit": (hit[0::2], False), "cache_miss": (hit[1::2] or hit, True),
                     "hybrid": (readers.get("hybrid") or [], False),
                     "typical_hit": (readers.get("typical") or [], False)}
            for name, (users, drop) in cases.items():
                if not users:
                    continue
                for u in users:  # warm: caches filled, statements prepared
                    await reader.page(u, limit=READ_LIMIT)
                times, sources = [], {}
                for i in range(n):
                    u = users[i % len(users)]
                    if drop:
                        await redis.delete(reader.timelines.key(u))
                    t = time.perf_counter()
                    page = await reader.page(u, limit=READ_LIMIT)
                    times.append(time.perf_counter() - t)
                    sources[page.source] = sources.get(page.source, 0) + 1
                out[name] = {"latency": lat_ms(times), "sources": sources, "readers": len(users)}
        finally:
            await redis.aclose()
            await asyncio.to_thread(store.close)
        return out

    async def copy_tweets(self, conn: Any, count: int) -> None:
        """COPY ``count`` synthetic tweets (authors with the workload's mix) spread over the last 30 days."""
        if count <= 0:
            return
        g = self.graph
        rng = random.Random(self.args.seed + 31)
        epoch = self.settings.snowflake_epoch_ms
        now = int(time.time() * 1000) - 60_000
        span = 30 * 86_400_000
        start = now - span
        step = span / count
        chunk = 50_000
        with bar(desc="COPY tweets", total=count, unit="row") as pb:
            async with conn.cursor() as cur:
                async with cur.copy("COPY tweets (tweet_id, author_id, text, created_at) FROM STDIN") as copy:
                    for base in range(0, count, chunk):
                        n = min(chunk, count - base)
                        authors = g.authors(n, rng)
                        lines = []
                        for j, a in enumerate(authors):
                            i = base + j
                            ms = int(start + i * step)
                            tid = ((ms - epoch) << 22) | (902 << 12) | (i & 0xFFF)
                            ts = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()
                            lines.append(f"{tid}\t{g.ids[a]}\tsynthetic tweet {i} by {g.ids[a]} lorem ipsum dolor\t{ts}\n")
                        await copy.write("".join(lines).encode())
                        pb.update(n)

    async def post_latency(self) -> dict[str, Any]:
        from bench import post_bench

        cfg = self.cfg
        settings = self.settings
        conc = cfg["post_concurrency"]
        async with post_bench.service(settings, "uvicorn", conc) as client:
            health = (await client.get("/healthz")).json()
            signups = await asyncio.gather(*(
                client.post("/v1/users", json={"handle": f"b{self.tag[-6:]}_{i}"}) for i in range(cfg["post_users"])))
            bad = [r for r in signups if r.status_code != 201]
            if bad:
                raise RuntimeError(f"signup failed: {bad[0].status_code} {bad[0].text}")
            auths = [{"Authorization": f"Bearer {r.json()['token']}"} for r in signups]
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                latencies, statuses, errors, elapsed = await asyncio.get_running_loop().run_in_executor(
                    pool, post_bench.load_in_process, str(client.base_url), auths, cfg["post_requests"], conc,
                    min(100, cfg["post_requests"] // 3))
        ok = statuses.get(201, 0)
        return {
            "how": "bench/post_bench.py: the Post service under uvicorn in this process, its raw keep-alive "
                   "HTTP/1.1 load generator in a separate process; 201 only after Kafka acks (acks=all)",
            "requests": cfg["post_requests"],
            "concurrency": conc,
            "ok": ok,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "transport_errors": errors,
            "requests_per_s": round(ok / elapsed, 1) if elapsed else None,
            "latency": lat_ms(latencies),
            "health": health.get("status", health) if isinstance(health, dict) else health,
        }

    async def http_reads(self) -> dict[str, Any]:
        out = self.workdir / "read_bench.json"
        cmd = [sys.executable, "-m", "bench.read_bench", *self.cfg["read_bench_args"], "--out", str(out)]
        log(" ".join(cmd[1:]))
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        raw, _ = await proc.communicate()
        text = raw.decode(errors="replace")
        if not out.exists():
            raise RuntimeError(f"bench.read_bench exited {proc.returncode} without results:\n{text[-3000:]}")
        data = json.loads(out.read_text())
        scenarios = {}
        for key, s in (data.get("scenarios") or {}).items():
            lat = s.get("latency_ms", {})
            scenarios[key] = {
                "scenario": s.get("scenario", key), "concurrency": s.get("concurrency"),
                "requests_per_s": s.get("throughput_rps"), "ok": s.get("ok"), "requests": s.get("requests"),
                "problems": s.get("problems"),
                "latency": {k: lat.get(k) for k in ("p50", "p90", "p99", "p999", "max", "mean") if k in lat},
            }
        return {
            "how": "bench/read_bench.py (subprocess): its own isolated world and query service under uvicorn, "
                   "load generator in a separate process; no concurrent writes",
            "command": " ".join(["python", *cmd[1:-2]]),
            "exit_code": proc.returncode,
            "population": data.get("population"),
            "scenarios": scenarios,
            "store_queries_per_read": data.get("store_queries_per_read"),
        }


def compact_plan(lines: list[str]) -> str:
    """An EXPLAIN ANALYZE text without the scans of partitions that returned no rows (72 monthly ones)."""
    out: list[str] = []
    skipped = 0
    skip_indent: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if indent > skip_indent and not line.lstrip().startswith("->"):
                continue
            if indent > skip_indent + 4:
                continue
            skip_indent = None
        if "->" in line and " on tweets_" in line and ("rows=0 " in line or "never executed" in line):
            skipped += 1
            skip_indent = indent
            continue
        out.append(line)
    if skipped:
        out.append(f"({skipped} scans of tweets partitions that returned no rows left out)")
    return "\n".join(out)


def _git_rev() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + ("+uncommitted" if dirty else "")
    except Exception:  # noqa: BLE001
        return None


# --- targets ----------------------------------------------------------------------------------------


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def http_p99(report: dict, scenario: str) -> tuple[float | None, Any]:
    """p99 of an HTTP scenario at its lowest concurrency (pure latency), and that concurrency."""
    best = None
    for s in (_get(report, "reads_http", "scenarios") or {}).values():
        if s.get("scenario") == scenario and s.get("latency", {}).get("p99") is not None:
            if best is None or (s.get("concurrency") or 0) < (best.get("concurrency") or 0):
                best = s
    return (best["latency"]["p99"], best.get("concurrency")) if best else (None, None)


def evaluate_targets(r: dict) -> list[dict]:
    out = []

    def add(name: str, value: Any, target: Any, met: bool | None, detail: str) -> None:
        out.append({"target": name, "value": value, "goal": target,
                    "status": "n/a" if met is None else ("met" if met else "missed"), "detail": detail})

    rate = _get(r, "fanout_throughput", "deliveries_per_s")
    goal = TARGETS["fanout_deliveries_per_s"]
    add("fanout deliveries/s", rate, f">= {goal:,}", None if rate is None else rate >= goal,
        "" if rate is None else f"{rate / goal:.0%} of the target ({'+' if rate >= goal else ''}{rate - goal:,.0f}/s)")
    redis_ceiling = _get(r, "ceilings", "redis", "zadd_per_s")
    # The pipeline writes Cassandra in UNLOGGED batches: hold it against batched inserts of the
    # same rows (the one-by-one figure, the issue's first definition, is in section 6 too).
    cass_ceiling = _get(r, "ceilings", "cassandra", "batched_inserts_per_s") or _get(
        r, "ceilings", "cassandra", "inserts_per_s")
    if rate is not None and redis_ceiling and cass_ceiling:
        slower = min(redis_ceiling, cass_ceiling)
        share = rate / slower
        which = "Cassandra batched inserts" if cass_ceiling <= redis_ceiling else "Redis ZADD"
        add("fanout vs slower raw store ceiling", round(share, 3), ">= 0.5", share >= 0.5,
            f"{rate:,.0f} / {slower:,.0f} ({which}/s)")
    else:
        add("fanout vs slower raw store ceiling", None, ">= 0.5", None, "missing figure")
    lag_rows = 0
    for run in _get(r, "fanout_lag", "runs") or []:
        if "capacity" not in run.get("load", ""):
            continue
        for cls, v in run["by_author_size"].items():
            p99 = _get(v, "from_kafka_ack_ms", "p99")
            if p99 is not None and cls != "celebrity":
                lag_rows += 1
                add(f"fanout lag p99 at {run['load']} ({run['tweet_rate_per_s']} tweets/s), {cls}", p99, "< 1000 ms",
                    p99 < 1000, f"n={_get(v, 'from_kafka_ack_ms', 'count')}, p50 {_get(v, 'from_kafka_ack_ms', 'p50')} "
                                f"ms, max {_get(v, 'from_kafka_ack_ms', 'max')} ms")
    if not lag_rows:
        add("fanout lag p99, authors < 10,000 followers", None, "< 1000 ms", None, "missing figure")
    hit, hit_c = http_p99(r, "cache_hit")
    miss, miss_c = http_p99(r, "cache_miss")
    hyb, hyb_c = http_p99(r, "hybrid_10")
    add("HTTP cache-hit read p99", hit, "< 5 ms", None if hit is None else hit < 5, f"concurrency {hit_c}")
    add("HTTP cache-miss read p99", miss, "< 25 ms", None if miss is None else miss < 25, f"concurrency {miss_c}")
    if hit is not None and hyb is not None:
        add("HTTP hybrid(10) p99 minus hit p99", round(hyb - hit, 2), "<= 5 ms", hyb - hit <= 5,
            f"{hyb} - {hit} ms at concurrency {hyb_c}")
    else:
        add("HTTP hybrid(10) p99 minus hit p99", None, "<= 5 ms", None, "missing figure")
    pg = _get(r, "pg_pull_baseline", "queries") or {}
    rows = _get(r, "pg_pull_baseline", "tweets_rows")
    for ours_name, ours, pg_key in (("HTTP cache hit", hit, "join/hit"), ("HTTP hybrid(10)", hyb, "join/hybrid")):
        pg_p99 = _get(pg, pg_key, "latency", "p99")
        if ours and pg_p99:
            ratio = pg_p99 / ours
            add(f"PostgreSQL pull (join) p99 / {ours_name} p99", round(ratio, 1), ">= 50x", ratio >= 50,
                f"{pg_p99} ms vs {ours} ms, {rows:,} tweets rows" if rows else f"{pg_p99} ms vs {ours} ms")
        else:
            add(f"PostgreSQL pull (join) p99 / {ours_name} p99", None, ">= 50x", None, "missing figure")
    quiet = _get(r, "pg_pull_baseline", "ours_in_process_same_conditions") or {}
    for pg_key, ours_key in (("join/hit", "cache_hit"), ("join/hybrid", "hybrid"), ("join/typical", "typical_hit"),
                             ("lateral/hit", "cache_hit"), ("lateral/hybrid", "hybrid"),
                             ("lateral/typical", "typical_hit")):
        pg_p99 = _get(pg, pg_key, "latency", "p99")
        ours = _get(quiet, ours_key, "latency", "p99")
        if ours and pg_p99:
            add(f"PostgreSQL pull ({pg_key}) p99 / our in-process {ours_key} p99, same data and conditions",
                round(pg_p99 / ours, 1), ">= 50x", pg_p99 / ours >= 50, f"{pg_p99} ms vs {ours} ms")
    return out


# --- report ------------------------------------------------------------------------------------------


def render_md(r: dict) -> str:
    m = r.get("meta", {})
    mach = m.get("machine", {})
    ds = _get(r, "dataset", "graph") or {}
    L: list[str] = []
    w = L.append
    w(f"# Benchmark run {m.get('timestamp')} (`--scale {m.get('scale')} --seed {m.get('seed')}`)")
    w("")
    w(f"Machine: {mach.get('nproc')} cores ({mach.get('cpu_model')}), {mach.get('memory_gb')} GB RAM, "
      f"Linux {mach.get('kernel')}, Python {mach.get('python')}; load average at start "
      f"{mach.get('loadavg_at_start')}, at end {m.get('loadavg_at_end')}. Commit {m.get('git_commit')}. "
      f"Whole run {m.get('duration_s')} s.")
    w("")
    w(f"All four servers, one Faust worker and the load generators share these {mach.get('nproc')} cores; other "
      "people's test runs may too (each phase reports the machine's busy share and the CPU used outside the "
      "benchmark's processes). Numbers are a floor for dedicated servers.")
    w("")
    w(f"Dataset: {ds.get('users'):,} users ({ds.get('accounts_with_followers'):,} with followers, "
      f"{ds.get('read_only_accounts'):,} read-only), {ds.get('follow_edges'):,} follows, "
      f"{ds.get('celebrities')} celebrities (threshold {ds.get('celebrity_threshold'):,}), "
      f"{ds.get('inactive_share', 0):.0%} inactive; followers of accounts that have some: "
      f"median {_get(ds, 'followers_of_accounts_with_followers', 'median')}, "
      f"p99 {_get(ds, 'followers_of_accounts_with_followers', 'p99')}, largest pushed authors "
      f"{_get(ds, 'followers_of_accounts_with_followers', 'large_authors')}; "
      f"{ds.get('expected_deliveries_per_tweet')} deliveries per tweet expected "
      f"(target {ds.get('target_deliveries_per_tweet')}). Topic partitions: {_get(r, 'dataset', 'partitions')}.")
    w("")
    w("## Targets")
    w("")
    w("| target | value | goal | status | detail |")
    w("| --- | --- | --- | --- | --- |")
    for t in r.get("targets", []):
        w(f"| {t['target']} | {t['value']} | {t['goal']} | **{t['status']}** | {t['detail']} |")
    w("")

    def err(name: str) -> bool:
        sec = r.get(name)
        if not isinstance(sec, dict):
            w(f"_{name}: not run_")
            return True
        if "error" in sec or "skipped" in sec:
            w(f"_{name}: {'skipped' if 'skipped' in sec else 'failed: ' + sec['error']}_")
            w("")
            return True
        return False

    w("## 1. Fanout throughput")
    w("")
    if not err("fanout_throughput"):
        f = r["fanout_throughput"]
        w(f"**{f['deliveries_per_s']:,} deliveries/s** end to end (Kafka -> fanout agent -> deliveries topic -> "
          f"delivery agent -> Cassandra `user_timeline` + Redis push): {f['deliveries_counted_in_cassandra']:,} rows "
          f"counted in Cassandra (expected from the graph: {f['deliveries_expected_from_graph']:,}; rows written to a "
          f"sample of inactive users: {f['rows_written_to_inactive_sample']}) for {f['tweets']:,} tweets over "
          f"{f['wall_s_first_publish_to_zero_lag']} s from the first publish to zero consumer lag "
          f"({f['feeding']}; fed for {f['feeding_s']} s) "
          f"({f['tweets_per_s']} tweets/s; calibration burst: {f['calibration']['deliveries_per_s']:,}/s). "
          f"{f['redis_pushes']}.")
        w("")
        w(f"Kafka messages consumed by the worker: {f['kafka_messages_consumed']:,} "
          f"({f['kafka_messages_consumed_per_s']:,}/s); table changelog messages produced: "
          f"{f['table_changelog_messages']:,} ({f['changelog_messages_per_1000_deliveries']} per 1,000 deliveries). "
          f"{f['end_resolution']}.")
        w("")
    w("## 2. Fanout lag (tweet accepted by Kafka -> visible in a follower's cached Redis timeline)")
    w("")
    if not err("fanout_lag"):
        f = r["fanout_lag"]
        w(f"Steady tweet rates as {f['rate_basis']}. {f['probe']}.")
        w("")
        w("| load | tweets/s | deliveries/s offered | author size | samples | p50 ms | p99 ms | max ms | "
          "not seen in 60 s | peak consumer lag | machine busy |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for run in f["runs"]:
            rows = [("all pushed authors", run["all_pushed_authors_from_kafka_ack_ms"], "")]
            rows += [(cls, v["from_kafka_ack_ms"], v["not_seen_within_60s"]) for cls, v in run["by_author_size"].items()]
            for cls, a, lost in rows:
                w(f"| {run['load']} | {run['tweet_rate_per_s']} | {run['offered_deliveries_per_s']:,} | {cls} | "
                  f"{a.get('count')} | {a.get('p50')} | {a.get('p99')} | {a.get('max')} | {lost} | "
                  f"{run['peak_consumer_lag_msgs']} | {run['machine_busy_share']:.0%} |")
        w("")
        for run in f["runs"]:
            ev = run.get("worker_log_warnings") or {}
            w(f"- {run['load']}: worst seconds (by send time, max lag ms) {run.get('worst_seconds_by_send_time')}; "
              f"worker log: {ev.get('producer_buffer_full', 0)} 'producer buffer full' warnings"
              + (f", and `{'`; `'.join(ev['lines'])}`" if ev.get("lines") else ""))
        w("")
        w("CPU seconds per process during each run: " + "; ".join(
            f"{run['load']}: {run['cpu_s']} (outside: {run['outside_these_processes_cpu_s']})" for run in f["runs"]))
        w("")
    w("## 3. Read latency")
    w("")
    w("### Through HTTP (`bench/read_bench.py`)")
    w("")
    if not err("reads_http"):
        h = r["reads_http"]
        w(f"{h['how']}. Command: `{h['command']}`. Population: {json.dumps(h.get('population'))}.")
        w("")
        w("| scenario | concurrency | req/s | p50 ms | p99 ms | p999 ms | max ms | problems |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for s in h["scenarios"].values():
            lat = s["latency"]
            w(f"| {s['scenario']} | {s['concurrency']} | {s['requests_per_s']} | {lat.get('p50')} | "
              f"{lat.get('p99')} | {lat.get('p999')} | {lat.get('max')} | {s.get('problems') or ''} |")
        w("")
    w("### In-process on the benchmark's data, 50 reads per tweet (`sinks/reader.py`)")
    w("")
    if not err("reads_inprocess"):
        h = r["reads_inprocess"]
        w(f"{h['how']}. {h['read_rate_per_s']} reads/s with {h['tweet_rate_per_s']} tweets/s "
          f"(ratio {h['read_write_ratio']}:1) for {h['duration_s']} s; closed-loop capacity "
          f"{h['closed_loop_capacity_reads_per_s']} reads/s; machine busy {h['machine_busy_share']:.0%}.")
        w("")
        w("| scenario | readers | reads | p50 ms | p99 ms | p999 ms | max ms | sources | tweets/page |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for k, s in h["scenarios"].items():
            lat = s["latency"]
            w(f"| {k} | {s['readers']} | {lat.get('count')} | {lat.get('p50')} | {lat.get('p99')} | "
              f"{lat.get('p999')} | {lat.get('max')} | {s['sources']} | {s['mean_tweets_per_page']} |")
        w("")
    w("## 4. Write latency: POST /v1/tweets")
    w("")
    if not err("write_latency"):
        p = r["write_latency"]
        lat = p["latency"]
        w(f"{p['how']}. {p['ok']}/{p['requests']} ok at concurrency {p['concurrency']}: "
          f"**{p['requests_per_s']} requests/s, p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms** "
          f"(p90 {lat.get('p90')}, max {lat.get('max')}).")
        w("")
    w("## 5. Write savings (activity rule)")
    w("")
    if not err("write_savings"):
        s = r["write_savings"]
        w(f"Over {s['tweets']:,} tweets ({s['celebrity_tweets']} by celebrities): {s['rows_written']:,} rows written; "
          f"a push to every follower of the non-celebrity authors would write {s['push_without_activity_rule']:,} "
          f"(**{s['saved_by_skipping_inactive']:.1%} saved** by skipping inactive users, at "
          f"{s['inactive_share_of_users']:.0%} inactive users); a naive push to every follower of every author "
          f"{s['naive_push_to_every_follower']:,} ({s['saved_vs_naive (inactive + celebrity rules)']:.1%} saved). "
          f"Design claim: {s['design_claim']}. Note: {s.get('note', '')}.")
        w("")
    w("## 6. Raw ceilings (same run, from Python) and the pipeline's share")
    w("")
    if not err("ceilings"):
        c = r["ceilings"]
        rate = _get(r, "fanout_throughput", "deliveries_per_s")
        consumed = _get(r, "fanout_throughput", "kafka_messages_consumed_per_s")

        def share(x: Any, y: Any) -> str:
            if not x or not y:
                return "n/a"
            return f"{x / y:.1%}" if x / y >= 0.01 else f"{x / y:.3%}"

        w("| ceiling | per second | pipeline figure | pipeline / ceiling |")
        w("| --- | --- | --- | --- |")
        w(f"| Redis pipelined ZADD ({c['redis']['zadd_ops']:,} ops) | {c['redis']['zadd_per_s']:,} | "
          f"{rate} deliveries/s | {share(rate, c['redis']['zadd_per_s'])} |")
        w(f"| Redis pipelined ZREVRANGE 0 49 on 800-entry sets | {c['redis']['zrevrange_0_49_per_s']:,} | | |")
        w(f"| Redis Lua push (RedisTimelines.push_many, entries) | {c['redis']['lua_push_entries_per_s']:,} | "
          f"{rate} deliveries/s | {share(rate, c['redis']['lua_push_entries_per_s'])} |")
        w(f"| Cassandra prepared inserts, CassandraStore.execute_many ({c['cassandra']['rows']:,} rows, "
          f"concurrency {c['cassandra']['best_concurrency']}; by concurrency "
          f"{c['cassandra']['inserts_per_s_by_concurrency']}) | {c['cassandra']['inserts_per_s']:,} | "
          f"{rate} deliveries/s | {share(rate, c['cassandra']['inserts_per_s'])} |")
        if c["cassandra"].get("batched_inserts_per_s"):
            b = c["cassandra"]["batched"]
            w(f"| Cassandra prepared inserts in UNLOGGED batches, as the pipeline writes them (up to "
              f"{b['statements_per_batch']} statements, {b['partitions_per_batch']} partitions and "
              f"{b['bytes_per_batch']:,} B per batch, {b['batches_in_flight']} in flight) | "
              f"{c['cassandra']['batched_inserts_per_s']:,} | {rate} deliveries/s | "
              f"{share(rate, c['cassandra']['batched_inserts_per_s'])} |")
        w(f"| aiokafka consume ({c['kafka']['messages']:,} msgs of {c['kafka']['message_bytes']} B, "
          f"{c['kafka']['consume_mb_per_s']} MB/s) | {c['kafka']['consume_msgs_per_s']:,} | "
          f"{consumed} msgs/s | {share(consumed, c['kafka']['consume_msgs_per_s'])} |")
        w(f"| aiokafka produce, acks=all | {c['kafka']['produce_acks_all_msgs_per_s']:,} | | |")
        w("")
    w("## 7. Baseline: the pull model in PostgreSQL alone")
    w("")
    if not err("pg_pull_baseline"):
        p = r["pg_pull_baseline"]
        w(f"{p['tweets_rows']:,} rows in `tweets` ({p['tweets_from_pipeline_projection']:,} from the pipeline's "
          f"projection, {p['tweets_copied']:,} COPYed in {p['copy_s']} s, authors drawn with the workload's mix), "
          f"{p['follows_rows']:,} rows in `follows` (the same graph, projected by the pipeline); sizes "
          f"{p['table_sizes']}. Indexes: {p['indexes']}. Readers: {p['readers']}. {p['how']}.")
        w("")
        w("| query / readers | queries | q/s | p50 ms | p99 ms | max ms | rows |")
        w("| --- | --- | --- | --- | --- | --- | --- |")
        for k, q in p["queries"].items():
            lat = q["latency"]
            w(f"| {k} | {lat.get('count')} | {q['queries_per_s']} | {lat.get('p50')} | {lat.get('p99')} | "
              f"{lat.get('max')} | {q['mean_rows']} |")
        w("")
        q = p.get("ours_in_process_same_conditions") or {}
        if q:
            w("Our reads under the same conditions (HomeTimelineReader in this process, one at a time, worker "
              "stopped, same readers):")
            w("")
            w("| scenario | reads | p50 ms | p99 ms | max ms | sources |")
            w("| --- | --- | --- | --- | --- | --- |")
            for k, v in q.items():
                lat = v["latency"]
                w(f"| {k} | {lat.get('count')} | {lat.get('p50')} | {lat.get('p99')} | {lat.get('max')} | "
                  f"{v['sources']} |")
            w("")
        for k, plan in p["plans"].items():
            w(f"<details><summary>plan: {k}</summary>\n\n```\n{plan}\n```\n</details>\n")
    w("## 8. CPU per 1,000 deliveries, per process")
    w("")
    if not err("cpu_per_1000_deliveries"):
        c = r["cpu_per_1000_deliveries"]
        w(f"Window: {c['window']}, {c['wall_s']} s, {c['deliveries']:,} deliveries; the machine was "
          f"{c['machine_busy_share']:.0%} busy ({c['machine_busy_cpu_s']} of {c['machine_capacity_cpu_s']} CPU-s); "
          f"{c['outside_these_processes_cpu_s']} CPU-s went to processes outside this list (other work on the "
          f"machine).")
        w("")
        w(f"All pipeline processes together: **{c.get('pipeline_cpu_s_per_1000_deliveries')} CPU-s per 1,000 "
          f"deliveries**, so these {mach.get('nproc')} cores could carry at most ~{c.get('machine_bound_deliveries_per_s')} "
          f"deliveries/s with nothing else running; 20,000/s would take ~{c.get('cores_needed_for_20000_per_s')} "
          "cores at this efficiency.")
        w("")
        w("| process | CPU s | CPU s per 1,000 deliveries |")
        w("| --- | --- | --- |")
        for k, v in c["cpu_s"].items():
            w(f"| {k} | {v} | {c['cpu_s_per_1000_deliveries'].get(k)} |")
        w("")
        if c.get("worker_threads_cpu_s"):
            w(f"Worker threads (CPU s): {c['worker_threads_cpu_s']}.")
            w("")
    w("## Where the time goes (worker profile)")
    w("")
    if not err("profile"):
        p = r["profile"]
        w(f"{p['how']}: {p['deliveries']:,} deliveries in {p['wall_s']} s "
          f"({p['deliveries_per_s_while_profiled']:,}/s while profiled, {p['profiler_slowdown']}x slower than "
          f"unprofiled); main thread CPU {p['main_thread_cpu_s']} s of {p['wall_s']} s wall. Full tree: "
          f"`{p['text_report']}` (git-ignored).")
        w("")
        w(f"Worker process CPU in this window: {p.get('worker_threads_cpu_s')} (from /proc; the main thread is the "
          "only one pyinstrument sees). Other processes (CPU s): "
          f"{ {k: v for k, v in (p.get('process_cpu_s') or {}).items() if k != 'worker'} }.")
        w("")
        ts = p.get("all_threads_cpu_sampler")
        if ts:
            w(f"All threads, CPU-weighted sampler ({ts['interval_s'] * 1000:.0f} ms; CPU each thread used since the "
              f"last sample charged to its current Python frame): {ts['cpu_s_by_thread']} CPU s over {ts['wall_s']} s.")
            w("")
            w("| thread | CPU s | top libraries (self) | top functions (self) |")
            w("| --- | --- | --- | --- |")
            for kind, v in ts["by_thread"].items():
                libs = ", ".join(f"{x['what']} {x['cpu_s']}" for x in v["by_library"][:5])
                funcs = ", ".join(f"`{x['what']}` {x['cpu_s']}" for x in v["top_functions"][:5])
                w(f"| {kind} | {v['cpu_s']} | {libs} | {funcs} |")
            w("")
        w("Main thread (pyinstrument, wall clock):")
        w("")
        for title, key in (("By task (inclusive)", "by_task_inclusive"),
                           ("By library (self time)", "by_library_self_time"),
                           ("Application functions (inclusive)", "top_application_functions_inclusive")):
            w(f"{title}:")
            w("")
            w("| what | s | share of wall |")
            w("| --- | --- | --- |")
            for row in p[key][:12]:
                w(f"| {row['what']} | {row['s']} | {row['share']:.1%} |")
            w("")
    w("## Graph load")
    w("")
    if not err("graph_load"):
        gl = r["graph_load"]
        w(f"{gl['follow_events']:,} follows through the pipeline in {gl['follows_s']} s = "
          f"**{gl['follows_per_s']} follows/s**; worker start + {gl['activity_events']:,} activity events "
          f"{gl['worker_start_and_activity_s']} s; {gl['active_users_cached']:,} of {gl['active_users']:,} active "
          f"users' timelines cached before the measurements.")
        w("")
    w("## Phases")
    w("")
    w(f"Seconds per phase: {m.get('phase_s')}. Cleanup: {r.get('cleanup')}.")
    w("")
    return "\n".join(L) + "\n"


# --- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where run-<timestamp>.json/.md go")
    parser.add_argument("--no-latest", action="store_true", help="do not copy the results to latest.json/.md")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip (debugging)")
    args = parser.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    from ops.services import ensure_up

    ensure_up(get_settings())
    bench = Bench(args)
    report = asyncio.run(bench.run())
    stem = args.out_dir / f"run-{bench.stamp}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(render_md(report))
    if not args.no_latest:
        shutil.copyfile(stem.with_suffix(".json"), args.out_dir / "latest.json")
        shutil.copyfile(stem.with_suffix(".md"), args.out_dir / "latest.md")
    print(f"wrote {stem}.json and .md" + ("" if args.no_latest else " (and latest.*)"))
    for t in report.get("targets", []):
        print(f"  {t['status']:>6}  {t['target']}: {t['value']} (goal {t['goal']}) {t['detail']}")
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    if failed:
        print(f"sections that failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
