"""Per-user token buckets in Redis: ``policies.ratelimit.take`` run atomically as a Lua script.

The script is a line-by-line transliteration of :func:`policies.ratelimit.take` (same
operations in the same order on IEEE doubles, state stored with ``%.17g`` so it
round-trips exactly); ``tests/unit/test_post_ratelimit.py`` runs both on the same
sequences and checks they agree. The clock is Redis' ``TIME`` so that every Post service
process shares one clock; tests may pass ``now_s`` explicitly.

State: hash ``ratelimit:post:<user id>`` with fields ``t`` (tokens) and ``u`` (updated,
seconds), expiring after the bucket would be full again anyway.
"""
from __future__ import annotations

from redis.asyncio import Redis

from policies.ratelimit import EPSILON, BucketState, TakeResult, full_refill_s

KEY_PREFIX = "ratelimit:post:"

# KEYS[1] bucket; ARGV: burst, rate_per_s, cost, now_s ('' = Redis TIME), ttl_s, epsilon
TAKE_LUA = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[4])
end
local ttl = tonumber(ARGV[5])
local epsilon = tonumber(ARGV[6])
local raw = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens, updated
if not raw[1] or not raw[2] then
  tokens = burst
  updated = now
else
  tokens = math.max(0.0, tonumber(raw[1]))
  updated = tonumber(raw[2])
  local elapsed = math.max(0.0, now - updated)
  tokens = math.min(burst, tokens + elapsed * rate)
  updated = math.max(updated, now)
end
local allowed = 0
local retry = 0.0
if tokens + epsilon >= cost then
  allowed = 1
  tokens = math.max(0.0, tokens - cost)
else
  retry = (cost - tokens) / rate
end
local ts = string.format('%.17g', tokens)
local us = string.format('%.17g', updated)
redis.call('HSET', KEYS[1], 't', ts, 'u', us)
redis.call('EXPIRE', KEYS[1], ttl)
return {allowed, ts, us, string.format('%.17g', retry)}
"""

# TAKE_LUA as a Lua function ``take(KEYS, ARGV)``, for scripts that take a token as their
# first step (the query service's first round trip, ``query/view.py``).
TAKE_FUNCTION_LUA = "local function take(KEYS, ARGV)\n" + TAKE_LUA + "end\n"


class RateLimited(Exception):
    """A token was refused (raised by callers that take one inside a script of their own)."""

    def __init__(self, result: TakeResult) -> None:
        super().__init__(f"rate limited; retry in {result.retry_after_s:.3f} s")
        self.result = result


class RedisTokenBucket:
    def __init__(self, redis: Redis, *, burst: float, rate_per_s: float, prefix: str = KEY_PREFIX) -> None:
        if not burst > 0 or not rate_per_s > 0:
            raise ValueError(f"a rate limit needs burst > 0 and rate > 0, got burst={burst}, rate={rate_per_s}"
                             " (TL_POST_RATE_* or TL_READ_RATE_*)")
        self.burst = burst
        self.rate_per_s = rate_per_s
        self.prefix = prefix
        self.ttl_s = full_refill_s(burst, rate_per_s) + 1
        self._script = redis.register_script(TAKE_LUA)

    def key(self, subject: int | str) -> str:
        return f"{self.prefix}{subject}"

    def args(self, cost: float = 1, now_s: float | None = None) -> list[str | int]:
        """ARGV of TAKE_LUA for one take (after its KEYS: ``[key(subject)]``)."""
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost must be in 0..{self.burst}, got {cost}")
        return [repr(float(self.burst)), repr(float(self.rate_per_s)), repr(float(cost)),
                "" if now_s is None else repr(float(now_s)), self.ttl_s, repr(EPSILON)]

    @staticmethod
    def result(raw: list) -> TakeResult:
        """TAKE_LUA's answer as a TakeResult."""
        allowed, tokens, updated, retry = raw
        return TakeResult(bool(int(allowed)), BucketState(float(tokens), float(updated)), float(retry))

    async def take(self, subject: int | str, cost: float = 1, now_s: float | None = None) -> TakeResult:
        return self.result(await self._script(keys=[self.key(subject)], args=self.args(cost, now_s)))
