"""Redis server CPU per timeline hit, for the capacity plan (``docs/capacity.md``).

    python -m bench.redis_hit_cpu [--hits 20000] [--concurrency 8]

A private ``redis-server`` on a free port (nothing else runs commands on it, so its ``INFO cpu``
is ours alone); 100 timelines of 800 entries and their pre-rendered bodies; then ``--hits`` calls
of one Lua script of the read path's shape: the 50 newest ids of a timeline and the ``r`` field
(pre-rendered JSON) of each id's body hash. Prints the server CPU per hit and hits/s per core.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time

from redis.asyncio import Redis

from localenv.worker import free_port

SCRIPT = """
local ids = redis.call('ZREVRANGE', KEYS[1], 0, 49)
local out = {}
for i, m in ipairs(ids) do out[i] = redis.call('HGET', ARGV[1] .. m, 'r') end
return out
"""
BODY = b'{"tweet_id":"1000000000000000000","author_id":"1000000000000000","text":"' + b"x" * 140 + b'"}'
USERS, ENTRIES = 100, 800


async def server_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


async def measure(port: int, hits: int, concurrency: int) -> dict[str, float]:
    redis = Redis(port=port)
    try:
        first = 10**15
        pipe = redis.pipeline(transaction=False)
        for u in range(USERS):
            ids = [first + u * 1000 + i for i in range(ENTRIES)]
            pipe.zadd(f"home:{u}", {str(t): t for t in ids})
            for t in ids:
                pipe.hset(f"t:{t}", "r", BODY)
        await pipe.execute()
        sha = await redis.script_load(SCRIPT)
        jobs = iter(range(hits))

        async def client() -> None:
            for k in jobs:
                await redis.evalsha(sha, 1, f"home:{k % USERS}", "t:")

        cpu0, t0 = await server_cpu(redis), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        cpu1, t1 = await server_cpu(redis), time.perf_counter()
    finally:
        await redis.aclose()
    per_hit = (cpu1 - cpu0) / hits
    return {"hits": hits, "server_cpu_s": round(cpu1 - cpu0, 2), "us_per_hit": round(per_hit * 1e6, 1),
            "hits_per_server_core": round(1 / per_hit) if per_hit else 0.0,
            "hits_per_s_from_one_client": round(hits / (t1 - t0))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_hit_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    port, folder = free_port(), tempfile.mkdtemp(prefix="redis-hit-cpu-")
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
                            stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        print(asyncio.run(measure(port, args.hits, args.concurrency)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
