"""Redis time per read-script shape: what a cache hit's first round trip pays inside Redis for its
window, its followed-author flags and its tweet bodies (``query/view.py``'s ``_OPEN``).

    python -m bench.redis_body_cost [--rounds 8] [--calls 300] [--out FILE]

A private key prefix on the configured Redis (``TL_REDIS_URL``): one timeline window of 56
members (the read's ``limit + SLACK + 1`` at limit 50), a following set of 10 authors, and
56 tweet bodies stored both as the worker stores them now (``sinks.redis_tweets``: a string
``<author>:<tail>``, read with one ``MGET``) and as it did before 2026-12-02 (a hash ``a t c r``).
Each shape is one script, called ``--calls`` times per round; Redis's own ``usec`` for
EVALSHA (``INFO commandstats``) gives the time inside Redis per call, the network and the
client left out. Rounds alternate the shapes; the minimum and the median over rounds are
reported (the machine is shared: the minimum is the cost, the median what a run saw).
Writes JSON to ``--out`` (default ``bench/results/redis-body-cost-<ts>.json``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from redis.asyncio import Redis

from schemas.tweet_json import render_tail
from settings import get_settings
from sinks.redis_tweets import body_value

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW = 56
TEXT = "tweet 2127880372824887296 by 1913891963019247: " + "x" * 80

# How bodies were read before 2026-12-02, from hashes ``a t c r d`` (sinks/redis_tweets.py).
HASH_BODY_LUA = """
local function body(key)
  local v = redis.call('HMGET', key, 'a', 'd', 'r')
  if v[3] then return v end
  return redis.call('HMGET', key, 'a', 't', 'c', 'd', 'r')
end
"""
_WINDOW = "local window = redis.call('ZREVRANGEBYLEX', KEYS[1], '+', '-', 'LIMIT', 0, %d)\n" % WINDOW
_ID = "string.match(m, '^0*(%d+):')"
SHAPES = {
    "window": _WINDOW + "return window",
    "flags: SISMEMBER per member": _WINDOW + (
        "local f = {} for i, m in ipairs(window) do "
        "f[i] = redis.call('SISMEMBER', KEYS[2], string.match(m, ':(%d+)$')) end return f"),
    "flags: one SMISMEMBER": _WINDOW + (
        "local a = {} for i, m in ipairs(window) do a[i] = string.match(m, ':(%d+)$') end "
        "return redis.call('SMISMEMBER', KEYS[2], unpack(a))"),
    "bodies: HMGET of 5 fields": _WINDOW + (
        "local b = {} for i, m in ipairs(window) do "
        f"b[i] = redis.call('HMGET', ARGV[1] .. {_ID}, 'a', 't', 'c', 'd', 'r') end return b"),
    "bodies: hashes, HMGET a d r each (before 2026-12-02)": HASH_BODY_LUA + _WINDOW + (
        f"local b = {{}} for i, m in ipairs(window) do b[i] = body(ARGV[1] .. {_ID}) end return b"),
    "bodies: HGET of the tail alone": _WINDOW + (
        f"local b = {{}} for i, m in ipairs(window) do b[i] = redis.call('HGET', ARGV[1] .. {_ID}, 'r') end return b"),
    "bodies: strings, one MGET (now)": _WINDOW + (
        f"local k = {{}} for i, m in ipairs(window) do k[i] = ARGV[2] .. {_ID} end return redis.call('MGET', unpack(k))"),
}


async def script_stats(redis: Redis) -> tuple[int, int]:
    """Script calls (EVAL and EVALSHA) Redis has run, and the microseconds it spent in them,
    since its stats were reset (``INFO commandstats``)."""
    stats = await redis.info("commandstats")
    rows = [stats.get(f"cmdstat_{name}", {}) for name in ("eval", "evalsha")]
    return sum(int(r.get("calls", 0)) for r in rows), sum(int(r.get("usec", 0)) for r in rows)


async def measure(redis: Redis, rounds: int, calls: int) -> dict[str, dict[str, float]]:
    prefix = f"bench-bodycost:{uuid.uuid4().hex[:8]}:"
    ids = [2127880372824887296 + i for i in range(WINDOW)]
    authors = [str(1000 + i % 10) for i in range(WINDOW)]
    try:
        await redis.sadd(prefix + "following", *set(authors))
        await redis.zadd(prefix + "home", {f"{t:019d}:{a}": 0 for t, a in zip(ids, authors)})
        async with redis.pipeline(transaction=False) as pipe:
            for t, a in zip(ids, authors):
                pipe.hset(f"{prefix}tweet:{t}", mapping={"a": a, "t": TEXT, "c": 1796161189651,
                                                         "r": render_tail(TEXT, 1796161189651)})
                pipe.set(f"{prefix}tb:{t}", body_value(int(a), TEXT, 1796161189651))
            await pipe.execute()
        shas = {name: await redis.script_load(src) for name, src in SHAPES.items()}
        keys = [prefix + "home", prefix + "following"]
        seen: dict[str, list[float]] = {name: [] for name in SHAPES}
        for _ in range(rounds):
            for name, sha in shas.items():
                for _ in range(20):
                    await redis.evalsha(sha, 2, *keys, prefix + "tweet:", prefix + "tb:")
                calls0, usec0 = await script_stats(redis)
                for _ in range(calls):
                    await redis.evalsha(sha, 2, *keys, prefix + "tweet:", prefix + "tb:")
                calls1, usec1 = await script_stats(redis)
                seen[name].append((usec1 - usec0) / max(1, calls1 - calls0))
        return {name: {"min_us": round(min(v), 1), "median_us": round(sorted(v)[len(v) // 2], 1)}
                for name, v in seen.items()}
    finally:
        keys = [k async for k in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)


async def main(args: argparse.Namespace) -> None:
    redis = Redis.from_url(get_settings().redis_url)
    try:
        shapes = await measure(redis, args.rounds, args.calls)
    finally:
        await redis.aclose()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else RESULTS / f"redis-body-cost-{stamp}.json"
    out.write_text(json.dumps({"benchmark": "redis_body_cost", "timestamp": stamp, "window": WINDOW,
                               "rounds": args.rounds, "calls_per_round": args.calls,
                               "usec_per_call_in_redis": shapes}, indent=2) + "\n")
    for name, row in shapes.items():
        print(f"{name:<42} min {row['min_us']:7.1f}  median {row['median_us']:7.1f} us per call in Redis")
    print(f"wrote {out}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_body_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
