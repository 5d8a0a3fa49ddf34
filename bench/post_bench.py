"""Benchmark of ``POST /v1/tweets`` on the real servers (not a test).

Starts the Post service in this process (uvicorn on a free loopback port, or with
``--mode asgi`` straight through httpx's ASGI transport), signs up ``--users`` users,
then keeps ``--concurrency`` requests in flight until ``--requests`` tweets were posted
(each one acknowledged by Kafka with acks=all before its 201). Reports throughput and
latency percentiles, prints a short summary and writes JSON to
``bench/results/post-<timestamp>.json``.

By default the events go to scratch topics (``bench-<timestamp>-tweets``, ...) that are
deleted afterwards, so the real, forever-retained log gets no benchmark tweets; pass
``--topics real`` to post to the configured topics. The rate limits (tweets, sign-ups, token lookups) are lifted for the run
(the Lua bucket still runs on every request). In uvicorn mode the load generator is a
minimal keep-alive HTTP/1.1 client (httpx's pool would cost more CPU than the service)
in a separate process (``--client inline`` puts it in the server's event loop); in asgi
mode httpx's ASGI transport calls the app in the same loop. Kafka, Redis and PostgreSQL share the same machine, so
the numbers are a floor for a dedicated server.

    python -m localenv up
    python -m bench.post_bench --users 50 --requests 3000 --concurrency 32
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

from bench.http_load import RawConnection, load_process, run_loop, service_processes, uvicorn_server
from bench.latency import latency_ms
from post.service import create_app
from settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


@asynccontextmanager
async def service(settings: Settings, mode: str, concurrency: int, workers: int = 0) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the Post service: uvicorn in this process, the app through httpx's ASGI
    transport (``mode`` asgi), or with ``workers`` > 0 ``python -m post.service --workers N``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(30.0)
    if workers:
        log = RESULTS / f"post-service-{os.getpid()}.log"
        async with service_processes("post.service", settings, log, workers) as base_url:
            async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as c:
                yield c
        log.unlink(missing_ok=True)
        return
    app = create_app(settings)
    if mode == "asgi":
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://post", timeout=timeout) as c:
                yield c
        return

    async with uvicorn_server(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as c:
            yield c


async def sign_up(client: httpx.AsyncClient, prefix: str, users: int) -> list[dict[str, str]]:
    """Sign up ``users`` users (handles ``<prefix>_<i>``); their ``Authorization`` headers."""
    signups = await asyncio.gather(*(
        client.post("/v1/users", json={"handle": f"{prefix}_{i}"}) for i in range(users)
    ))
    bad = [r for r in signups if r.status_code != 201]
    if bad:
        raise RuntimeError(f"signup failed: {bad[0].status_code} {bad[0].text}")
    return [{"Authorization": f"Bearer {r.json()['token']}"} for r in signups]


async def load(
    client: httpx.AsyncClient, auths: list[dict[str, str]], requests: int, concurrency: int, warmup: int,
    keys: str | None = None,
) -> tuple[list[float], dict[int, int], dict[str, int], float]:
    """Post ``requests`` tweets keeping ``concurrency`` in flight; (latencies of 201s, statuses, errors, s)."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    async def post(i: int) -> None:
        started = time.perf_counter()
        try:
            resp = await client.post("/v1/tweets", json={"text": f"bench tweet {i} \u2713"},
                                     headers=_headers(auths, i, keys))
            statuses[resp.status_code] += 1
            if resp.status_code == 201:
                latencies.append(time.perf_counter() - started)
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1

    # Warm up connections, the producer and the token cache; not measured.
    for i in range(0, warmup, concurrency):
        await asyncio.gather(*(post(j) for j in range(i, min(i + concurrency, warmup))))
    latencies.clear()
    statuses.clear()
    errors.clear()

    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            await post(i)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, dict(statuses), dict(errors), time.perf_counter() - began


async def load_raw(
    base_url: str, auths: list[dict[str, str]], requests: int, concurrency: int, warmup: int,
    keys: str | None = None,
) -> tuple[list[float], dict[int, int], dict[str, int], float]:
    """Like :func:`load`, over ``concurrency`` raw keep-alive connections."""
    url = httpx.URL(base_url)
    conns = [RawConnection(url.host, url.port or 80) for _ in range(concurrency)]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    async def post(conn: RawConnection, i: int) -> None:
        body = json.dumps({"text": f"bench tweet {i} \u2713"}, ensure_ascii=False).encode()
        started = time.perf_counter()
        try:
            status, _ = await conn.request("POST", "/v1/tweets", _headers(auths, i, keys), body)
            statuses[status] += 1
            if status == 201:
                latencies.append(time.perf_counter() - started)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            await conn.close()

    async def worker(conn: RawConnection, numbers: Any) -> None:
        for i in numbers:
            await post(conn, i)

    try:
        warm = iter(range(warmup))
        await asyncio.gather(*(worker(c, warm) for c in conns))
        latencies.clear()
        statuses.clear()
        errors.clear()
        counter = iter(range(requests))
        began = time.perf_counter()
        await asyncio.gather(*(worker(c, counter) for c in conns))
        return latencies, dict(statuses), dict(errors), time.perf_counter() - began
    finally:
        for c in conns:
            await c.close()


def load_in_process(
    base_url: str, auths: list[dict[str, str]], requests: int, concurrency: int, warmup: int,
    keys: str | None = None,
) -> tuple[list[float], dict[int, int], dict[str, int], float]:
    return asyncio.run(load_raw(base_url, auths, requests, concurrency, warmup, keys))


def _headers(auths: list[dict[str, str]], i: int, keys: str | None) -> dict[str, str]:
    """The i-th request's headers: a user's token and, with ``--idempotency-keys``, a key
    of its own (``<run>-<i>``, so warm-up and measured requests never share one)."""
    headers = auths[i % len(auths)]
    return headers if keys is None else {**headers, "Idempotency-Key": f"{keys}-{i}"}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = get_settings()
    settings = base
    if args.topics == "scratch":
        from ops.schema import create_topics_async

        settings = base.with_topic_prefix(f"bench-{stamp.lower()}-{uuid.uuid4().hex[:6]}-", args.partitions)
        await create_topics_async(settings, partitions=args.partitions)
    settings = settings.replace(post_rate_burst=10**9, post_rate_per_s=10**9, signup_rate_burst=10**9,
                                signup_rate_per_s=10**9, token_lookup_rate_burst=10**9,
                                token_lookup_rate_per_s=10**9)

    try:
        async with service(settings, args.mode, args.concurrency, args.workers) as client:
            health = (await client.get("/healthz")).json()
            run_id = uuid.uuid4().hex[:8]
            auths = await sign_up(client, f"b{run_id}", args.users)
            keys = f"bench-{run_id}" if args.idempotency_keys else None
            if (args.mode == "uvicorn" or args.workers) and args.client == "process":
                with load_process() as in_process:
                    outcome = await in_process(load_in_process, str(client.base_url), auths, args.requests,
                                               args.concurrency, args.warmup, keys)
            elif args.mode == "uvicorn":
                outcome = await load_raw(str(client.base_url), auths, args.requests, args.concurrency, args.warmup,
                                         keys)
            else:
                outcome = await load(client, auths, args.requests, args.concurrency, args.warmup, keys)
    finally:
        if args.topics == "scratch" and not args.keep_topics:
            try:
                from ops.schema import delete_topics_async

                await delete_topics_async(settings)
            except Exception as exc:  # noqa: BLE001
                print(f"warning: could not delete scratch topics: {exc}", file=sys.stderr)

    latencies, statuses, errors, elapsed = outcome
    ordered = sorted(latencies)
    ok = statuses.get(201, 0)
    statuses = Counter(statuses)
    result = {
        "benchmark": "post_tweets",
        "timestamp": stamp,
        "mode": args.mode if not args.workers else f"python -m post.service --workers {args.workers}",
        "client": args.client if args.mode == "uvicorn" else "asgi-inline",
        "topics": args.topics,
        "partitions": args.partitions if args.topics == "scratch" else base.topic_partitions,
        "users": args.users,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "idempotency_keys": args.idempotency_keys,
        "elapsed_s": round(elapsed, 3),
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "transport_errors": dict(errors),
        "throughput_rps": round(ok / elapsed, 1) if elapsed else None,
        "latency_ms": latency_ms(ordered),
        "health": health,
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.post_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--mode", choices=["uvicorn", "asgi"], default="uvicorn")
    parser.add_argument("--client", choices=["process", "inline"], default="process",
                        help="uvicorn mode: run the load generator in its own process (default) or in the server's loop")
    parser.add_argument("--workers", type=int, default=0,
                        help="0: the service in this process (--mode); N: python -m post.service --workers N")
    parser.add_argument("--topics", choices=["scratch", "real"], default="scratch")
    parser.add_argument("--partitions", type=int, default=8, help="partitions of scratch topics")
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--idempotency-keys", action="store_true",
                        help="send a distinct Idempotency-Key with every tweet (measures the idempotency records)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/post-<ts>.json)")
    args = parser.parse_args(argv)
    if min(args.users, args.requests, args.concurrency) < 1 or args.warmup < 0 or args.workers < 0:
        parser.error("--users, --requests and --concurrency must be >= 1, --warmup >= 0")

    result = run_loop(run(args))
    out = args.out or RESULTS / f"post-{result['timestamp']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency_ms"]
    print(
        f"POST /v1/tweets ({result['mode']}, concurrency {result['concurrency']}, {result['users']} users): "
        f"{result['ok']}/{result['requests']} ok in {result['elapsed_s']} s = {result['throughput_rps']} tweets/s; "
        f"latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; "
        f"statuses {result['statuses']}"
        + (f"; transport errors {result['transport_errors']}" if result["transport_errors"] else "")
    )
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0 if result["ok"] == result["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
