"""The soak: minutes at a fixed share of the measured fanout capacity, reads alongside,
memory and consumer lag sampled all along; both must stay flat.

    python -m bench.soak [--minutes 10] [--share 0.5] [--read-ratio 50] [--capacity N]
                         [--scale full|small] [--post-share 0.2] [--max-reads-in-flight 16]

Writes ``bench/results/soak-<time>.json`` and ``.md``. Not run by CI.

The run gets its own namespace on the servers of ``./dev services up`` (topics, keyspace,
schema, Redis prefix, consumer group ``soak-<tag>``, all removed at the end), the
benchmark's seeded graph (``bench/graph.py``; ``full``: 12,000 users, 75 deliveries per
tweet), one worker and the Post and query services as child processes. After the graph is
loaded and every active user's timeline is cached (as in ``bench/run.py``):

* tweets at ``share`` x ``capacity`` deliveries/s (capacity: the fanout throughput of
  ``bench/results/latest.json``), authors drawn with the graph's weights; ``post-share``
  of them through ``POST /v1/tweets`` (the authors have accounts and tokens), the rest
  produced straight to Kafka like ``bench/run.py``;
* home-timeline reads through the query service at ``read-ratio`` per tweet, open loop,
  at most ``max-reads-in-flight`` at once: a read due while all slots are busy is counted
  as not sent (the machine's read capacity, not the plan, then sets the ratio);
* every ``sample-s`` seconds: the resident memory (RSS) of the worker and of both
  services (and of this load generator), consumer lag per topic, the window's reads and
  writes and their errors, the machine's busy share.

Flat means: for each process, RSS growth from the first to the last minute after
``warmup-min`` is under 10%; consumer lag does not trend up (the last third's peak is at
most twice the first third's after warm-up, or under ``lag_floor`` messages) and returns
to 0 within 60 s once the load stops.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psycopg

from api.auth import hash_token, new_token
from bench.context import Publisher, log, open_reader
from bench.graph import TweetFactory, generate, scaled_spec
from bench.soak_report import render_md, verdict
from bench.sysstats import machine, system_cpu
from localenv.worker import Worker
from localenv.workload import produce
from ops.faults.cluster import ServiceProcess, rss_bytes
from ops.lag import LagMonitor
from ops.schema import apply_cassandra, apply_postgres, create_topics_async, drop_namespace
from settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def latest_capacity() -> float | None:
    try:
        data = json.loads((RESULTS / "latest.json").read_text())
        return float(data["fanout_throughput"]["deliveries_per_s"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def soak_settings(tag: str, workdir: Path, scale: str) -> Settings:
    spec, hysteresis = scaled_spec(scale)
    return get_settings().isolated(
        "soak", tag, workdir, topic_partitions=8 if scale == "full" else 4,
        celebrity_threshold=spec.celebrity_threshold, celebrity_hysteresis=hysteresis,
        post_rate_burst=10**9, post_rate_per_s=1e9, read_rate_burst=10**9, read_rate_per_s=1e9,
    )


class Window:
    """Counters of one sampling window."""

    def __init__(self) -> None:
        self.reads = 0
        self.read_errors: dict[str, int] = {}
        self.read_latency: list[float] = []
        self.reads_not_sent = 0
        self.tweets_kafka = 0
        self.tweets_http = 0
        self.tweet_errors: dict[str, int] = {}

    def error(self, kind: dict[str, int], key: str) -> None:
        kind[key] = kind.get(key, 0) + 1


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.tag = f"{self.stamp.lower()[:15]}{uuid.uuid4().hex[:4]}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"soak-{self.tag}-"))
        self.settings = soak_settings(self.tag, self.workdir, args.scale)
        spec, _ = scaled_spec(args.scale)
        self.graph = generate(spec, args.seed)
        self.factory = TweetFactory(self.graph)
        self.rng = random.Random(args.seed)
        self.worker: Worker | None = None
        self.post: ServiceProcess | None = None
        self.query: ServiceProcess | None = None
        self.tokens: dict[int, str] = {}  # user id -> bearer token (posters and readers)
        self.readers: list[int] = []
        self.window = Window()
        self.samples: list[dict[str, Any]] = []

    # --- set-up ------------------------------------------------------------------------------
    async def setup(self) -> dict[str, Any]:
        began = time.monotonic()
        s, g = self.settings, self.graph
        await asyncio.to_thread(apply_postgres, s)
        await asyncio.to_thread(apply_cassandra, s)
        await create_topics_async(s, partitions=s.topic_partitions)
        self.worker = Worker(s, self.workdir / "worker.log").start()
        self.monitor = await LagMonitor(s).start()
        now = int(time.time() * 1000)
        await produce(s, g.activity_events(now))
        await self.monitor.wait_zero(timeout=600, check=self.worker.check)
        await produce(s, g.follow_events(now))
        await self.monitor.wait_zero(timeout=7200, check=self.worker.check)
        async with open_reader(s) as reader:
            active = [g.ids[i] for i in range(g.n) if g.active[i]]
            sem = asyncio.Semaphore(16)

            async def warm(uid: int) -> None:
                async with sem:
                    await reader.page(uid, limit=50)

            await asyncio.gather(*(warm(u) for u in active))
        # Accounts and tokens: every poster (for POST /v1/tweets) and a sample of active readers.
        posters = sorted({a for a in g._authors})  # noqa: SLF001 - the graph's authors
        active_idx = [i for i in range(g.n) if g.active[i]]
        self.readers = [g.ids[i] for i in self.rng.sample(active_idx, min(self.args.readers, len(active_idx)))]
        users = sorted({g.ids[i] for i in posters} | set(self.readers))
        self.tokens = {u: new_token() for u in users}
        async with await psycopg.AsyncConnection.connect(s.postgres_dsn, autocommit=True,
                                                         **s.postgres_kwargs()) as conn:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO users (user_id, handle, token_hash) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    [(u, f"s{u}", hash_token(t)) for u, t in self.tokens.items()])
        self.post = ServiceProcess("post.service", s, self.workdir / "post.log").start()
        self.query = ServiceProcess("query.service", s, self.workdir / "query.log").start()
        await asyncio.gather(self.post.wait_ready(), self.query.wait_ready())
        return {"setup_s": round(time.monotonic() - began, 1), "accounts": len(self.tokens),
                "readers": len(self.readers), "active_users_cached": len(active)}

    # --- load ------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        a, g = self.args, self.graph
        per_tweet = g.expected_deliveries_per_tweet()
        tweets_per_s = a.share * a.capacity / per_tweet
        reads_per_s = tweets_per_s * a.read_ratio
        plan = {"capacity_deliveries_per_s": a.capacity, "share": a.share,
                "deliveries_per_s_offered": round(a.share * a.capacity, 1),
                "deliveries_per_tweet": round(per_tweet, 1), "tweets_per_s": round(tweets_per_s, 2),
                "post_share": a.post_share, "read_ratio": a.read_ratio, "reads_per_s_offered": round(reads_per_s, 1),
                "max_reads_in_flight": a.max_reads_in_flight, "minutes": a.minutes, "sample_s": a.sample_s}
        log(f"soak: {plan}")
        pub = await Publisher(self.settings, linger_ms=5).start()
        limits = httpx.Limits(max_connections=a.max_reads_in_flight + 16)
        post_http = httpx.AsyncClient(base_url=self.post.url, timeout=30.0, limits=limits)
        query_http = httpx.AsyncClient(base_url=self.query.url, timeout=30.0, limits=limits)
        stop = asyncio.Event()
        read_slots = asyncio.Semaphore(a.max_reads_in_flight)
        post_slots = asyncio.Semaphore(32)
        pending: set[asyncio.Task] = set()
        rng = self.rng

        async def tweet_http(author: int) -> None:
            w = self.window
            async with post_slots:
                try:
                    resp = await post_http.post("/v1/tweets", json={"text": f"soak by {author}"},
                                                headers={"Authorization": f"Bearer {self.tokens[author]}"})
                    if resp.status_code == 201:
                        self.window.tweets_http += 1
                    else:
                        w.error(w.tweet_errors, str(resp.status_code))
                except httpx.HTTPError as exc:
                    w.error(w.tweet_errors, type(exc).__name__)

        async def read_one(user: int) -> None:
            w = self.window
            try:
                began = time.perf_counter()
                resp = await query_http.get(f"/v1/users/{user}/timelines/home", params={"limit": 50},
                                            headers={"Authorization": f"Bearer {self.tokens[user]}"})
                if resp.status_code == 200:
                    self.window.reads += 1
                    self.window.read_latency.append(time.perf_counter() - began)
                else:
                    w.error(w.read_errors, str(resp.status_code))
            except httpx.HTTPError as exc:
                w.error(w.read_errors, type(exc).__name__)
            finally:
                read_slots.release()

        def spawn(coro: Any) -> None:
            task = asyncio.create_task(coro)
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def writer() -> None:
            i, began = 0, time.perf_counter()
            while not stop.is_set():
                due = began + i / tweets_per_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                author = g.authors(1, rng)[0]
                if rng.random() < a.post_share:
                    spawn(tweet_http(g.ids[author]))
                else:
                    await pub.send(self.factory.make(author))
                    self.window.tweets_kafka += 1
                i += 1

        async def reader() -> None:
            i, began = 0, time.perf_counter()
            while not stop.is_set():
                due = began + i / reads_per_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif -delay > 1.0:  # more than a second behind: skip ahead, count what was skipped
                    skipped = int(-delay * reads_per_s)
                    self.window.reads_not_sent += skipped
                    i += skipped
                    continue
                if read_slots.locked():
                    self.window.reads_not_sent += 1
                else:
                    await read_slots.acquire()
                    spawn(read_one(rng.choice(self.readers)))
                i += 1

        async def sampler() -> None:
            t0 = time.monotonic()
            busy0, total0 = system_cpu()
            while not stop.is_set():
                await asyncio.sleep(a.sample_s)
                busy1, total1 = system_cpu()
                self.samples.append(await self.sample(time.monotonic() - t0, busy1 - busy0, total1 - total0))
                busy0, total0 = busy1, total1
                log(f"soak t={self.samples[-1]['t_s']}s lag={self.samples[-1]['lag_total']} "
                    f"rss={self.samples[-1]['rss_mb']} reads/s={self.samples[-1]['reads_per_s']} "
                    f"tweets/s={self.samples[-1]['tweets_per_s']}")

        tasks = [asyncio.create_task(c) for c in (writer(), reader(), sampler())]
        try:
            await asyncio.sleep(a.minutes * 60)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*pending, return_exceptions=True)
            await pub.stop()
            await post_http.aclose()
            await query_http.aclose()
        stopped = time.time()
        try:
            drain = await self.monitor.wait_zero(timeout=600, check=self.worker.check)
            drain_s = round(drain.zero_at - stopped, 1)
        except TimeoutError as exc:
            drain_s = None
            plan["drain_error"] = str(exc)
        plan["drain_s"] = drain_s
        return plan

    async def sample(self, t: float, busy: float, total: float) -> dict[str, Any]:
        w, self.window = self.window, Window()
        s = self.args.sample_s
        try:
            lag = await asyncio.wait_for(self.monitor.lag(), 10.0)
        except Exception as exc:  # noqa: BLE001
            lag = {"error": repr(exc)}
        pids = {"worker": self.worker.proc.pid, "post_service": self.post.proc.pid,
                "query_service": self.query.proc.pid, "load_generator": os.getpid()}
        rss = {k: rss_bytes(p) for k, p in pids.items()}
        lat = sorted(w.read_latency)
        return {
            "t_s": round(t, 1),
            "lag": lag, "lag_total": sum(v for v in lag.values() if isinstance(v, int)),
            "rss_mb": {k: round(v / 2**20, 1) if v else None for k, v in rss.items()},
            "reads_per_s": round(w.reads / s, 1), "reads_not_sent": w.reads_not_sent,
            "read_errors": w.read_errors,
            "read_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
            "read_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1) if lat else None,
            "tweets_per_s": round((w.tweets_kafka + w.tweets_http) / s, 1), "tweets_http": w.tweets_http,
            "tweet_errors": w.tweet_errors,
            "machine_busy": round(busy / total, 3) if total else None,
        }

    async def cleanup(self) -> dict[str, Any]:
        for svc in (self.post, self.query):
            if svc is not None:
                await asyncio.to_thread(svc.stop)
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
            keep = self.args.out_dir / f"soak-{self.stamp}.worker.log"
            try:
                keep.write_text("\n".join(self.worker.log_tail(300).splitlines()) + "\n")
            except OSError:
                pass
        if getattr(self, "monitor", None) is not None:
            await self.monitor.stop()
        done = await drop_namespace(self.settings)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return done


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    soak = Soak(args)
    report: dict[str, Any] = {"timestamp": soak.stamp, "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
                              "machine": machine(), "graph": soak.graph.describe(), "namespace": soak.settings.app_id}
    try:
        report["setup"] = await soak.setup()
        report["plan"] = await soak.run()
    except Exception as exc:  # noqa: BLE001 - reported with what was sampled
        report["error"] = repr(exc)
        if soak.worker is not None and not soak.worker.alive():
            report["worker_log_tail"] = soak.worker.log_tail(40)
    finally:
        report["samples"] = soak.samples
        report["cleanup"] = await soak.cleanup()
    report["verdict"] = verdict(soak.samples, args.warmup_min, report.get("plan", {}).get("drain_s"))
    if "error" in report:
        report["verdict"]["flat"] = False
        report["verdict"]["why"] = report["error"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.5, help="of the fanout capacity (default 0.5)")
    parser.add_argument("--capacity", type=float, default=None,
                        help="fanout capacity, deliveries/s (default: bench/results/latest.json)")
    parser.add_argument("--read-ratio", type=float, default=50.0, help="home-timeline reads per tweet")
    parser.add_argument("--max-reads-in-flight", type=int, default=16)
    parser.add_argument("--post-share", type=float, default=0.2, help="share of tweets sent through the Post service")
    parser.add_argument("--readers", type=int, default=1000, help="accounts that read")
    parser.add_argument("--scale", choices=["small", "full"], default="full")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-min", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.capacity = args.capacity or latest_capacity()
    if not args.capacity:
        parser.error("no --capacity and no bench/results/latest.json to read it from")
    report = asyncio.run(amain(args))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    base = args.out_dir / f"soak-{report['timestamp']}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    base.with_suffix(".md").write_text(render_md(report))
    print(render_md(report))
    log(f"wrote {base}.json and .md")
    return 0 if report["verdict"].get("flat") else 1


if __name__ == "__main__":
    sys.exit(main())
