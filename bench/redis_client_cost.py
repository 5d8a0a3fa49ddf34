"""Python CPU per script call: redis-py's client against ``sinks.redis_pipelined`` on the same call.

    python -m bench.redis_client_cost [--rounds 8] [--calls 2000] [--out FILE]

One script shaped like a cache hit's first round trip (``query/view.py``'s ``_OPEN``): 7 keys
and 20 arguments in, a reply of a 56-member window and 56 bodies of three fields (the
rendered tail ~200 bytes) out, on the configured Redis (``TL_REDIS_URL``). Each round calls it
``--calls`` times one after another with each client, then ``--calls`` times 8 at once (the
service at concurrency 8), alternating the clients; the process's CPU time (``time.process_time``)
and the wall time per call are measured around each run. The minimum and the median over rounds
are reported (the machine is shared: the minimum is the cost, the median what a run saw). Both
clients get the same replies (checked). Writes JSON to ``--out`` (default
``bench/results/redis-client-cost-<ts>.json``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from redis.asyncio import Redis

from api.dependencies import REDIS_TIMEOUT_S
from settings import get_settings
from sinks.redis_client import connect
from sinks.redis_pipelined import PipelinedRedis

RESULTS = Path(__file__).resolve().parent / "results"
SCRIPT = """
local window, bodies = {}, {}
for i = 1, 56 do
  window[i] = string.format('%019d:%d', 2127880372824887296 + i, 1000 + i % 10)
  bodies[i] = {tostring(1000 + i % 10), false, ARGV[1]}
end
return {window, {window[56]}, 57, 'v1', 11, {}, {}, 'v2', 1, '', bodies, {}}
"""
KEYS = [f"bench-clientcost:{{1913891963019247}}:{k}" for k in ("tl", "tlv", "fo", "fov", "ce", "cev", "rl")]
ARGS = ["(" + "9" * 19, 57, "token", 3600, "tweet:", "", "", 8, "1", "20.0", "10.0", "1.0", "", 3, "1e-09",
        ', "text": "tweet by 1913891963019247: ' + "x" * 120 + '", "created_at": "2026-12-02T07:00:00.000Z"}', "a", "b",
        "c", "d"]


async def run(call, calls: int, concurrency: int) -> tuple[float, float]:
    """CPU and wall microseconds per call over ``calls`` calls, ``concurrency`` at once."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(calls // concurrency):
        if concurrency == 1:
            await call()
        else:
            await asyncio.gather(*(call() for _ in range(concurrency)))
    n = calls // concurrency * concurrency
    return (time.process_time() - c0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6


async def measure(rounds: int, calls: int) -> dict[str, dict[str, float]]:
    settings = get_settings()
    redis: Redis = connect(settings, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S,
                           health_check_interval=30)
    pipelined = PipelinedRedis.for_settings(settings, timeout_s=REDIS_TIMEOUT_S, connect_timeout_s=REDIS_TIMEOUT_S)
    if pipelined is None:
        raise SystemExit("TL_REDIS_URL is not one plain TCP server: the pipelined client does not serve it")
    script = redis.register_script(SCRIPT)
    clients = {"redis-py": lambda: script(keys=KEYS, args=ARGS),
               "pipelined": lambda: pipelined.evalsha(script, KEYS, ARGS)}
    try:
        answers = [await call() for call in clients.values()]
        if answers[0] != answers[1]:
            raise SystemExit(f"the clients answered differently: {answers[0]!r} != {answers[1]!r}")
        seen: dict[str, list[tuple[float, float]]] = {f"{name} c{c}": [] for c in (1, 8) for name in clients}
        for _ in range(rounds):
            for concurrency in (1, 8):
                for name, call in clients.items():
                    await run(call, 100, concurrency)  # warm
                    seen[f"{name} c{concurrency}"].append(await run(call, calls, concurrency))
        out = {}
        for name, rows in seen.items():
            cpu = sorted(r[0] for r in rows)
            wall = sorted(r[1] for r in rows)
            out[name] = {"cpu_us_min": round(cpu[0], 1), "cpu_us_median": round(cpu[len(cpu) // 2], 1),
                         "wall_us_min": round(wall[0], 1), "wall_us_median": round(wall[len(wall) // 2], 1)}
        return out
    finally:
        await pipelined.aclose()
        await redis.aclose()


async def main(args: argparse.Namespace) -> None:
    rows = await measure(args.rounds, args.calls)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else RESULTS / f"redis-client-cost-{stamp}.json"
    out.write_text(json.dumps({"benchmark": "redis_client_cost", "timestamp": stamp, "rounds": args.rounds,
                               "calls_per_round": args.calls, "per_call": rows}, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name:<16} CPU min {row['cpu_us_min']:6.1f} median {row['cpu_us_median']:6.1f} us per call;"
              f"  wall min {row['wall_us_min']:6.1f} median {row['wall_us_median']:6.1f} us")
    print(f"wrote {out}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_client_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out")
    import uvloop  # the services' loop (api.common.serve)
    uvloop.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
