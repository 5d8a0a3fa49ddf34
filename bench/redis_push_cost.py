"""CPU per timeline entry of ``RedisTimelines.push_many``: keys declared per user (a cluster's
way) against the joined form one Redis takes (``_PUSH_JOINED``).

    python -m bench.redis_push_cost [--rounds 60] [--users 900]

Each round pushes one entry to each of ``--users`` users drawn from 1,000 (half of them
cached), as stage 2 does under a steady load (about one entry per user per batch), on the
configured Redis (``TL_REDIS_URL``); the two forms alternate, twice each. Reports this
process's CPU (``time.process_time``) and Redis's (``INFO cpu``) per entry.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import time

from redis.asyncio import Redis

from settings import get_settings
from sinks.redis_timeline import RedisTimelines, member


async def redis_cpu(r: Redis) -> float:
    info = await r.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


async def main(rounds: int, per_round: int) -> None:
    r = Redis.from_url(get_settings().redis_url)
    timelines = RedisTimelines(r, prefix="bench-pushcost:", cap=800, ttl_s=60)
    users = list(range(1, 1001))
    for u in users[::2]:
        await r.zadd(timelines.key(u), {member(0, 0): 0})
    rng = random.Random(1)
    try:
        for joined in (False, True, False, True):
            timelines.joined = joined
            cpu, entries, server = 0.0, 0, await redis_cpu(r)
            for rnd in range(rounds):
                adds = {u: [(10**18 + rnd, 7)] for u in rng.sample(users, per_round)}
                began = time.process_time()
                await timelines.push_many(adds)
                cpu += time.process_time() - began
                entries += per_round
            server = await redis_cpu(r) - server
            print(f"{'joined' if joined else 'keys per user'}: {cpu / entries * 1e6:.2f} us client CPU, "
                  f"{server / entries * 1e6:.2f} us Redis CPU per entry")
    finally:
        keys = [k async for k in r.scan_iter(match="bench-pushcost:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--users", type=int, default=900)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.users))
