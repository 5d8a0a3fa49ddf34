"""Benchmark of ``GET /v1/users/{id}/timelines/home`` on the real servers (not a test).

Builds an isolated world (own topics, keyspace, Redis prefix) and drives it through the
real pipeline: a Faust worker subprocess consumes follows and tweets produced on Kafka
until it has caught up, then is stopped so that it does not compete for the CPU. The
population (celebrity threshold ``--threshold``, default 25 followers):

* ``--normal`` normal authors (default 60) with ``--tweets`` tweets each (default 25),
  each followed by 10 readers (never a celebrity);
* 50 celebrities with 10 tweets each, followed by ``--threshold`` fans (so they are
  pulled at read time, never pushed);
* three groups of ``--readers`` readers (default 20) following 10 normal authors and
  0, 10 or 50 celebrities; home timelines hold 250 materialized entries (below the cap).

Scenarios (first page, ``limit=50``), each ``--requests`` requests at each ``--concurrency``
(requests in flight; default 1 for unloaded latency, then 8 for throughput), readers
taken round-robin:

* ``cache_hit``: 0 celebrities, timeline and following list cached (warmed first);
* ``cache_miss``: 0 celebrities, the cached timeline deleted before each request (the
  delete is not timed; the request refills it); tweet bodies stay cached;
* ``hybrid_10`` / ``hybrid_50``: cached timeline plus 10 or 50 celebrity pulls.

Every response is checked: status 200, 50 tweets, the expected ``source``; the first
page of one reader per group must equal the reference (``policies.reference``). Per
scenario, ``per_read`` gives the reader's Cassandra queries and Redis round trips per
request (from the app's own counters; the handle lookup and activity mark are not in them),
``service_cpu_ms_per_read`` the CPU of the service (all its threads, and with ``--workers``
all its processes) and ``redis_script_us_per_read`` the time Redis spent running scripts (its
``INFO commandstats``), per read: both steadier than latency on a shared machine.

The service runs in this process under uvicorn on a free loopback port (or, with
``--workers N``, as ``python -m query.service --workers N``); the load generator (a minimal
keep-alive HTTP/1.1 client) runs in a separate process, as in ``bench/post_bench.py``. Then
each scenario but the miss runs again for ``--wrk-seconds`` under wrk, a load generator in C
(``bench/wrk.py``: less client time inside each latency, less of the 2 cores taken from the
service); both are reported, with each client's CPU per request. Kafka, Cassandra, Redis and
PostgreSQL share this machine, so the numbers are a floor for dedicated servers.

    python -m localenv up
    python -m bench.read_bench --requests 3000 --concurrency 1,8
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import httpx
import orjson
from redis.asyncio import Redis

from api.auth import hash_token, new_token
from bench import wrk
from bench.http_load import RawConnection, load_process, run_loop, service_cpu_s, service_processes, uvicorn_server
from bench.latency import latency_ms
from bench.redis_body_cost import script_stats
from bench.redis_floor import floor_in_process
from localenv.worker import Worker
from localenv.workload import produce
from ops.lag import wait_caught_up
from ops.schema import apply_cassandra, create_topics_async, drop_namespace
from policies.reference import ReferenceModel
from policies.snowflake import SnowflakeGenerator
from query.service import create_app
from settings import Settings, get_settings
from sinks.redis_timeline import timeline_key

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
RESULTS = REPO / "bench" / "results"
CELEBRITIES = 50
CELEB_TWEETS = 10
FOLLOWS_PER_READER = 10
GROUPS = {"cache_hit": 0, "cache_miss": 0, "hybrid_10": 10, "hybrid_50": 50}
EXPECTED_SOURCE = {"cache_hit": "cache", "cache_miss": "store", "hybrid_10": "cache", "hybrid_50": "cache"}
LIMIT = 50


# --- the world ------------------------------------------------------------------------------


def bench_settings(base: Settings, tag: str, threshold: int, workdir: Path) -> Settings:
    """A namespace of its own (``Settings.isolated``), except PostgreSQL: the readers' accounts
    go to the base schema's ``users`` and are deleted by ``teardown``. The per-reader rate limit
    is raised out of the way (its Redis round trip is still made and measured)."""
    return base.isolated("bench-read", tag, workdir, topic_partitions=8, postgres_schema=base.postgres_schema,
                         celebrity_threshold=threshold, celebrity_hysteresis=2,
                         read_rate_burst=10**9, read_rate_per_s=10**9,
                         token_lookup_rate_burst=10**9, token_lookup_rate_per_s=10**9)


class Population:
    """Users and events of the benchmark world (deterministic given the id base)."""

    def __init__(self, readers: int, normal: int, tweets: int, threshold: int) -> None:
        base = 10**15 + secrets.randbelow(10**15)
        ids = iter(range(base, base + 10**6))
        self.normal = [next(ids) for _ in range(normal)]
        self.celebs = [next(ids) for _ in range(CELEBRITIES)]
        self.fans = [next(ids) for _ in range(threshold)]
        self.groups = {celebs: [next(ids) for _ in range(readers)] for celebs in sorted(set(GROUPS.values()))}
        clock = [int(time.time() * 1000) - 3600_000]

        def tick() -> int:
            clock[0] += 7
            return clock[0]

        snow = SnowflakeGenerator(worker_id=13, clock=lambda: clock[0])
        self.follows: list[dict] = []
        for celebs, members in self.groups.items():
            for i, reader in enumerate(members):
                first = (i * FOLLOWS_PER_READER + celebs) % normal
                authors = [self.normal[(first + j) % normal] for j in range(FOLLOWS_PER_READER)]
                authors += self.celebs[:celebs]
                self.follows += [self._followed(reader, a, tick()) for a in authors]
        self.follows += [self._followed(f, c, tick()) for f in self.fans for c in self.celebs]
        self.tweets: list[dict] = []
        for _ in range(tweets):
            for a in self.normal:
                tid = snow.next_id()
                self.tweets.append({"type": "tweet_posted", "tweet_id": tid, "author_id": a,
                                    "text": f"tweet {tid} by {a}: " + "x" * 80, "created_at": tick()})
        for _ in range(CELEB_TWEETS):
            for c in self.celebs:
                tid = snow.next_id()
                self.tweets.append({"type": "tweet_posted", "tweet_id": tid, "author_id": c,
                                    "text": f"celebrity tweet {tid} by {c}", "created_at": tick()})

    @staticmethod
    def _followed(follower: int, followee: int, at: int) -> dict:
        return {"type": "followed", "follower_id": follower, "followee_id": followee, "at": at}

    def readers(self) -> list[int]:
        return [r for members in self.groups.values() for r in members]


# --- load generator (separate process) -----------------------------------------------------------


async def load(
    base_url: str, redis_url: str, targets: list[tuple[str, dict[str, str], str | None]],
    requests: int, concurrency: int, expected_source: str,
) -> dict[str, Any]:
    """``requests`` GETs over ``concurrency`` connections; ``targets``: (path, headers, key to delete first)."""
    url = httpx.URL(base_url)
    conns = [RawConnection(url.host, url.port or 80) for _ in range(concurrency)]
    redis = Redis.from_url(redis_url)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    problems: Counter[str] = Counter()
    counter = iter(range(requests))

    async def worker(conn: RawConnection) -> None:
        for i in counter:
            path, headers, drop_key = targets[i % len(targets)]
            if drop_key is not None:
                await redis.delete(drop_key)
            started = time.perf_counter()
            try:
                status, body = await conn.request("GET", path, headers)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                problems[type(exc).__name__] += 1
                await conn.close()
                continue
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1
            if status == 200:
                meta = orjson.loads(body)["meta"]
                if meta["result_count"] != LIMIT:
                    problems["short page"] += 1
                if meta["source"] != expected_source:
                    problems[f"source {meta['source']}"] += 1

    try:
        began, cpu_began = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed, cpu_s = time.perf_counter() - began, time.process_time() - cpu_began
    finally:
        for c in conns:
            await c.close()
        await redis.aclose()
    return {"latencies": latencies, "statuses": dict(statuses), "problems": dict(problems), "elapsed": elapsed,
            "client_cpu_s": cpu_s}


def load_in_process(*args: Any) -> dict[str, Any]:
    return asyncio.run(load(*args))


def summarize(name: str, celebs: int, outcome: dict[str, Any], requests: int, concurrency: int) -> dict[str, Any]:
    ordered = sorted(outcome["latencies"])
    ok = outcome["statuses"].get(200, 0)
    return {
        "scenario": name,
        "celebrities_followed": celebs,
        "client": "python",
        "requests": requests,
        "concurrency": concurrency,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(outcome["statuses"].items())},
        "problems": outcome["problems"],
        "elapsed_s": round(outcome["elapsed"], 3),
        "throughput_rps": round(ok / outcome["elapsed"], 1) if outcome["elapsed"] else None,
        "latency_ms": latency_ms(ordered, (0.50, 0.90, 0.99, 0.999)),
        # The load generator's CPU (checking each page included, timing excluded), per request.
        "client_cpu_ms_per_request": round(outcome["client_cpu_s"] * 1000 / requests, 4),
    }


# --- run ----------------------------------------------------------------------------------------


async def build_world(settings: Settings, pop: Population, workdir: Path) -> float:
    """Publish the population's events through a real worker; returns the seconds it took."""
    await asyncio.to_thread(apply_cassandra, settings)
    await create_topics_async(settings, partitions=settings.topic_partitions)
    worker = Worker(settings, workdir / "worker.log").start()
    began = time.monotonic()
    try:
        await produce(settings, pop.follows)
        await wait_caught_up(settings, timeout=900, check=worker.check)
        await produce(settings, pop.tweets)
        await wait_caught_up(settings, timeout=900, check=worker.check)
    finally:
        worker.stop()
    return time.monotonic() - began


async def redis_script_time(redis_url: str) -> int:
    """Microseconds Redis has spent running scripts (EVAL and EVALSHA) since its stats were reset."""
    redis = Redis.from_url(redis_url)
    try:
        return (await script_stats(redis))[1]
    finally:
        await redis.aclose()


async def teardown(settings: Settings, accounts: list[int]) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True, **settings.postgres_kwargs()) as conn:
        await conn.execute("DELETE FROM users WHERE user_id = ANY(%s)", (accounts,))
    await drop_namespace(settings)  # its users live in the base schema: that one stays


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tag = f"{stamp.lower()}_{uuid.uuid4().hex[:6]}"
    workdir = RESULTS / f"run-read-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    settings = bench_settings(get_settings(), tag, args.threshold, workdir)
    pop = Population(args.readers, args.normal, args.tweets, args.threshold)
    tokens = {r: new_token() for r in pop.readers()}
    results: dict[str, Any] = {}
    floors: dict[str, Any] = {}
    try:
        build_s = await build_world(settings, pop, workdir)
        print(f"world built: {len(pop.follows)} follows, {len(pop.tweets)} tweets in {build_s:.1f} s")
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True, **settings.postgres_kwargs()) as conn:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO users (user_id, handle, token_hash) VALUES (%s, %s, %s)",
                    [(r, f"br_{uuid.uuid4().hex[:20]}", hash_token(t)) for r, t in tokens.items()],
                )
        reference = ReferenceModel()
        for event in pop.follows + pop.tweets:
            reference.apply(event)

        # --workers 0: uvicorn in this process (the app's own counters give per_read); N: the
        # service as it runs in production, ``python -m query.service --workers N``.
        app = None if args.workers else create_app(settings)
        pids: list[int] = []
        server = (uvicorn_server(app) if app is not None else
                  service_processes("query.service", settings, workdir / "query.log", args.workers, pids))
        # The service's CPU, all its threads (and processes): steadier than latency on a shared machine.
        service_cpu = time.process_time if app is not None else (lambda: service_cpu_s(pids[0]))
        async with server as base:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                health = (await client.get("/healthz")).json()
                # Warm up (fills caches, emits the readers' user_active) and check correctness.
                for members in pop.groups.values():
                    for r in members:
                        resp = await client.get(f"/v1/users/{r}/timelines/home?limit={LIMIT}",
                                                headers={"Authorization": f"Bearer {tokens[r]}"})
                        assert resp.status_code == 200, resp.text
                    r = members[0]
                    resp = await client.get(f"/v1/users/{r}/timelines/home?limit={LIMIT}",
                                            headers={"Authorization": f"Bearer {tokens[r]}"})
                    got = [int(t["tweet_id"]) for t in resp.json()["data"]]
                    if got != reference.home_timeline(r, LIMIT):
                        raise SystemExit(f"reader {r}: first page differs from the reference")
            with load_process() as in_process:
                for concurrency in args.concurrency:
                    # The bare-Redis floor in the same process, the same minute: HTTP numbers are ratios to it.
                    bare = await in_process(floor_in_process, settings.redis_url, settings.redis_prefix,
                                            args.requests, concurrency)
                    floors[f"c{concurrency}"] = bare
                    print(f"{'redis_floor@c' + str(concurrency):<14} {bare['reads_per_s']:>8} req/s  "
                          f"p50 {bare['latency_ms']['p50']} ms  p99 {bare['latency_ms']['p99']} ms")
                    for name, celebs in GROUPS.items():
                        if args.scenarios and name not in args.scenarios:
                            continue
                        members = pop.groups[celebs]
                        targets = [
                            (f"/v1/users/{r}/timelines/home?limit={LIMIT}", {"Authorization": f"Bearer {tokens[r]}"},
                             timeline_key(settings.redis_prefix, r) if name == "cache_miss" else None)
                            for r in members
                        ]
                        expected = EXPECTED_SOURCE[name]
                        # A short unmeasured run first (connections, warm caches), then the measured one.
                        await in_process(load_in_process, base, settings.redis_url, targets,
                                         min(200, args.requests), concurrency, expected)
                        before = _counters(app)
                        outcome, costs = await with_costs(settings.redis_url, service_cpu, lambda: in_process(
                            load_in_process, base, settings.redis_url, targets, args.requests, concurrency, expected))
                        after = _counters(app)
                        key = f"{name}@c{concurrency}"
                        results[key] = summarize(name, celebs, outcome, args.requests, concurrency)
                        served = max(1, outcome["statuses"].get(200, 0))
                        results[key]["per_read"] = {k: round((after[k] - before[k]) / served, 2) for k in after}
                        results[key].update(per_read_costs(*costs, served, args.workers or 1))
                        lat = results[key]["latency_ms"]
                        results[key]["vs_redis_floor"] = {
                            q: round(lat[q] / bare["latency_ms"][q], 2) for q in ("p50", "p99")
                            if lat[q] and bare["latency_ms"][q]
                        }
                        show(key, results[key])
                        if args.wrk_seconds and name != "cache_miss":  # wrk cannot drop a key before each read
                            key = f"{name}@c{concurrency}/wrk"
                            results[key] = await measure_wrk(
                                name, celebs, base, targets, concurrency, args.wrk_seconds,
                                settings.redis_url, service_cpu, args.workers or 1)
                            show(key, results[key])
    finally:
        await teardown(settings, list(tokens))
        shutil.rmtree(workdir / "faust", ignore_errors=True)  # the worker's log stays

    return {
        "benchmark": "read_home_timeline",
        "timestamp": stamp,
        "mode": (f"python -m query.service --workers {args.workers}" if args.workers else "uvicorn in-process")
        + " (loopback, free port); load generator in a separate process (raw keep-alive HTTP/1.1)",
        "server_processes": args.workers or 1,
        "limit": LIMIT,
        "population": {
            "readers_per_group": args.readers, "normal_authors": args.normal, "tweets_per_normal_author": args.tweets,
            "celebrities": CELEBRITIES, "tweets_per_celebrity": CELEB_TWEETS, "celebrity_threshold": args.threshold,
            "follows_per_reader": FOLLOWS_PER_READER, "timeline_entries_per_reader": FOLLOWS_PER_READER * args.tweets,
            "events": len(pop.follows) + len(pop.tweets),
        },
        "world_build_s": round(build_s, 1),
        "scenarios": results,
        "redis_floor": floors,
        "health": health,
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }


async def measure_wrk(name: str, celebs: int, base: str, targets: list[tuple[str, dict[str, str], str | None]],
                      concurrency: int, seconds: float, redis_url: str, service_cpu: Callable[[], float],
                      processes: int) -> dict[str, Any]:
    """The scenario again with wrk (``bench/wrk.py``): the same targets, the same service."""
    auth = [(path, headers["Authorization"]) for path, headers, _ in targets]
    w, costs = await with_costs(redis_url, service_cpu, lambda: wrk.run(base, auth, concurrency, seconds))
    return {
        "scenario": name, "celebrities_followed": celebs, "client": "wrk", "requests": w["requests"],
        "concurrency": concurrency, "ok": w["ok"], "problems": w["errors"], "elapsed_s": w["elapsed_s"],
        "throughput_rps": w["throughput_rps"], "latency_ms": w["latency_ms"],
        "client_cpu_ms_per_request": w["client_cpu_ms_per_request"],
        **per_read_costs(*costs, max(1, w["ok"]), processes),
    }


async def with_costs(redis_url: str, service_cpu: Callable[[], float],
                     measured: Callable[[], Awaitable[T]]) -> tuple[T, tuple[float, int]]:
    """``measured()``'s result, and what it cost meanwhile: the service's CPU seconds and the
    microseconds Redis spent running scripts (``INFO commandstats``)."""
    scripts_before = await redis_script_time(redis_url)
    cpu_before = service_cpu()
    result = await measured()
    cpu_s = service_cpu() - cpu_before
    return result, (cpu_s, await redis_script_time(redis_url) - scripts_before)


def per_read_costs(cpu_s: float, script_us: int, served: int, processes: int) -> dict[str, Any]:
    """The costs of ``with_costs`` per read served: steadier than latency on a shared machine."""
    return {"service_cpu_ms_per_read": round(cpu_s * 1000 / served, 3),
            "redis_script_us_per_read": round(script_us / served, 1), "server_processes": processes}


def show(key: str, s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    print(f"{key:<18} {s['throughput_rps']:>8} req/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
          f"p999 {lat['p999']} ms  cpu {s.get('service_cpu_ms_per_read')} ms/read  "
          f"client cpu {s.get('client_cpu_ms_per_request')} ms/request  "
          f"redis scripts {s['redis_script_us_per_read']} us/read  problems {s['problems']}")


def _counters(app: Any) -> dict[str, float]:
    """The app's own read counters: Cassandra queries and Redis round trips of home reads."""
    if app is None:
        return {}
    registry = app.state.metrics.registry
    return {
        "cassandra_queries": registry.get_sample_value("timeline_store_queries_total", {"timeline": "home"}) or 0.0,
        "redis_round_trips": registry.get_sample_value("timeline_redis_round_trips_total", {"timeline": "home"})
        or 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.read_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per scenario")
    parser.add_argument("--concurrency", default="1,8",
                        help="requests in flight; a comma-separated list measures each scenario at each")
    parser.add_argument("--readers", type=int, default=20, help="readers per group")
    parser.add_argument("--normal", type=int, default=60, help="normal authors")
    parser.add_argument("--tweets", type=int, default=25, help="tweets per normal author")
    parser.add_argument("--threshold", type=int, default=25, help="celebrity threshold (followers)")
    parser.add_argument("--workers", type=int, default=0,
                        help="0: the service under uvicorn in this process; N: python -m query.service --workers N")
    parser.add_argument("--scenarios", default="",
                        help=f"comma-separated subset of {', '.join(GROUPS)} (default: all); e.g. to profile one")
    parser.add_argument("--wrk-seconds", type=float, default=5.0,
                        help="then each scenario but the miss with wrk for this long (bench/wrk.py); 0: not")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/read-<ts>.json)")
    args = parser.parse_args(argv)
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if args.scenarios - set(GROUPS):
        parser.error(f"--scenarios: unknown {', '.join(sorted(args.scenarios - set(GROUPS)))}")
    try:
        args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    except ValueError:
        parser.error("--concurrency must be integers separated by commas")
    if min(args.requests, args.readers, args.tweets, *args.concurrency) < 1 or args.workers < 0:
        parser.error("--requests, --concurrency, --readers and --tweets must be >= 1")
    if args.wrk_seconds < 0:
        parser.error("--wrk-seconds must be >= 0")
    if args.wrk_seconds and not wrk.available():
        parser.error("--wrk-seconds: wrk is not installed (./dev installs it; apt-get install wrk), or pass 0")
    if args.normal < FOLLOWS_PER_READER or args.readers * 3 * FOLLOWS_PER_READER // args.normal >= args.threshold - 2:
        parser.error("normal authors would get too many followers (they must stay below the celebrity threshold)")

    result = run_loop(run(args))
    out = args.out or RESULTS / f"read-{result['timestamp']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    bad = [s for s in result["scenarios"].values() if s["problems"] or s["ok"] != s["requests"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
