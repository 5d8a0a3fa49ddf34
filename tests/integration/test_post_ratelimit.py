"""The Redis Lua token bucket (api.ratelimit) agrees with policies.ratelimit.take, bit for bit.

This is a unit test of one function pair, but the Lua half only runs inside Redis, so it
needs the real Redis of ``python -m localenv up`` (hence the integration marker).
Both implementations are driven through the same random sequences of (time step, cost)
with explicit clocks, and every decision, stored state and retry-after must be equal.
"""
from __future__ import annotations

import math
import random
import uuid

import pytest
from redis.asyncio import Redis

from api.ratelimit import RedisTokenBucket
from policies.ratelimit import BucketState, full_refill_s, retry_after_header, take
from settings import get_settings

pytestmark = pytest.mark.integration

SCENARIOS = [
    # burst, rate_per_s
    (1, 0.01),
    (2, 0.5),
    (5, 1.0),
    (50, 0.5),
    (3, 7.25),
    (10, 0.1),
    (1000, 333.3),
]


async def _redis() -> Redis:
    client = Redis.from_url(get_settings().redis_url, socket_connect_timeout=3)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.fail(f"Redis at {get_settings().redis_url} is needed: run `python -m localenv up` ({exc})")
    return client


@pytest.mark.parametrize("burst,rate", SCENARIOS)
async def test_lua_bucket_agrees_with_policy(burst: float, rate: float) -> None:
    rng = random.Random(f"{burst}/{rate}")
    redis = await _redis()
    bucket = RedisTokenBucket(redis, burst=burst, rate_per_s=rate, prefix=f"test:rl:{uuid.uuid4().hex}:")
    try:
        state: BucketState | None = None
        now = 1_700_000_000.0 + rng.random() * 1000
        allowed_count = 0
        for step in range(400):
            # Mostly bursts, some idle gaps, and a few clock steps backwards.
            roll = rng.random()
            if roll < 0.6:
                now += rng.random() * (1 / rate) * 0.2
            elif roll < 0.9:
                now += rng.random() * (burst / rate)
            else:
                now -= rng.random() * 5
            cost = rng.choice([1, 1, 1, 0, burst, min(burst, 2), rng.random() * burst])
            expected = take(state, now, burst, rate, cost)
            got = await bucket.take("u", cost=cost, now_s=now)
            assert got.allowed == expected.allowed, (step, now, cost, state)
            assert got.state == expected.state, (step, got, expected)
            assert got.retry_after_s == expected.retry_after_s, (step, got, expected)
            state = expected.state
            allowed_count += expected.allowed
        assert 0 < allowed_count < 400  # the sequences exercise both outcomes
        ttl = await redis.ttl(bucket.key("u"))
        assert 0 < ttl <= full_refill_s(burst, rate) + 1
    finally:
        await redis.delete(bucket.key("u"))
        await redis.aclose()


async def test_retry_after_is_honoured_exactly() -> None:
    """Waiting the reported retry-after (not rounded) makes the next take succeed."""
    redis = await _redis()
    bucket = RedisTokenBucket(redis, burst=3, rate_per_s=0.3, prefix=f"test:rl:{uuid.uuid4().hex}:")
    try:
        now = 1_000.0
        for _ in range(3):
            assert (await bucket.take("u", now_s=now)).allowed
        denied = await bucket.take("u", now_s=now)
        assert not denied.allowed
        assert math.isclose(denied.retry_after_s, 1 / 0.3)
        assert retry_after_header(denied.retry_after_s) == 4
        assert (await bucket.take("u", now_s=now + denied.retry_after_s)).allowed
    finally:
        await redis.delete(bucket.key("u"))
        await redis.aclose()


async def test_server_clock_is_used_by_default() -> None:
    redis = await _redis()
    bucket = RedisTokenBucket(redis, burst=2, rate_per_s=0.001, prefix=f"test:rl:{uuid.uuid4().hex}:")
    try:
        results = [await bucket.take("u") for _ in range(3)]
        assert [r.allowed for r in results] == [True, True, False]
        seconds, micros = await redis.time()
        assert abs(results[-1].state.updated_s - (seconds + micros / 1e6)) < 5
        assert results[-1].retry_after_s > 900
    finally:
        await redis.delete(bucket.key("u"))
        await redis.aclose()
