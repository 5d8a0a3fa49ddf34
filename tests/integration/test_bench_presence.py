"""The lag probes' presence check (bench/phases/fanout_lag.py ``Presence``) on the real Redis:
the Lua script and the pipelined ZSCOREs it falls back to find exactly the present pairs,
across the script's chunks."""
from __future__ import annotations

import uuid

from redis.asyncio import Redis

from bench.phases.fanout_lag import Presence
from settings import Settings


async def test_the_script_and_the_pipeline_find_exactly_the_present_members(services: Settings) -> None:
    redis = Redis.from_url(services.redis_url)
    prefix = f"test-presence:{uuid.uuid4().hex}"
    keys = [f"{prefix}:{i}" for i in range(40)]
    try:
        for i, key in enumerate(keys):
            await redis.zadd(key, {f"m{j}": j for j in range(i % 7 + 1)})
        # 2,500 pairs: three script calls; members present or not, keys that do not exist
        pairs = [(keys[n % 40] if n % 11 else f"{prefix}:absent", f"m{n % 9}") for n in range(2_500)]
        expected = {n for n, (key, m) in enumerate(pairs)
                    if key != f"{prefix}:absent" and int(m[1:]) <= keys.index(key) % 7}
        assert 0 < len(expected) < len(pairs)

        scripted = Presence(redis)
        assert await scripted.check(pairs) == expected and scripted.scripted
        piped = Presence(redis)
        piped.scripted = False
        assert await piped.check(pairs) == expected
        assert await scripted.check([]) == set()
    finally:
        await redis.delete(*keys)
        await redis.aclose()
