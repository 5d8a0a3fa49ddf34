"""The bare-Redis floor of a timeline read, measured next to the HTTP benchmarks.

What a cache hit could cost at the very least from Python: ``ZREVRANGE key 0 49`` then
``MGET`` of the 50 bodies it names (two round trips, redis-py asyncio with hiredis), on a
sorted set and bodies of the size the read benchmark uses. The keys live under the
benchmark's own prefix (``<prefix>floor:...``) and are deleted afterwards. Run in the load
generator's process, so the same machine, the same hour and the same noise: the HTTP
numbers are reported as ratios to it.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from bench.latency import latency_ms

ENTRIES = 50
BODY = b'{"tweet_id":"1000000000000000000","author_id":"1000000000000000","text":"' + b"x" * 100 + b'"}'


async def floor(redis_url: str, prefix: str, requests: int, concurrency: int) -> dict[str, Any]:
    """Latency (ms) and throughput of ``requests`` bare reads over ``concurrency`` connections."""
    redis = Redis.from_url(redis_url, max_connections=concurrency + 1)
    zkey = f"{prefix}floor:timeline"
    bodies = [f"{prefix}floor:tweet:{i}" for i in range(ENTRIES)]
    try:
        await redis.delete(zkey, *bodies)
        await redis.zadd(zkey, {key: 0 for key in bodies})
        await redis.mset({key: BODY for key in bodies})
        latencies: list[float] = []
        counter = iter(range(requests + 200))

        async def worker() -> None:
            for i in counter:
                started = time.perf_counter()
                names = await redis.zrevrange(zkey, 0, ENTRIES - 1)
                got = await redis.mget(names)
                if i >= 200:  # the first 200 (connections, warm-up) are not measured
                    latencies.append(time.perf_counter() - started)
                assert len(got) == ENTRIES and got[0] is not None

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await redis.delete(zkey, *bodies)
        await redis.aclose()
    return {"concurrency": concurrency, "requests": requests, "reads_per_s": round(len(latencies) / elapsed, 1),
            "latency_ms": latency_ms(sorted(latencies), (0.50, 0.90, 0.99, 0.999))}


def floor_in_process(*args: Any) -> dict[str, Any]:
    return asyncio.run(floor(*args))
