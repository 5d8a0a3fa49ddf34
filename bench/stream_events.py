"""The query service's cost per live stream event, alone: no worker, no pipeline load.

    python -m bench.stream_events [--streams 10000] [--burst 300] [--every 0.1] [--seconds 45] [--out PATH]

One namespace of its own, the query service as a child process (``python -m query.service``),
``--streams`` users each with a stream open over a raw socket (this process holds the client
ends), then for ``--seconds``: a burst of ``--burst`` notices every ``--every`` s, published
straight to the users' live channels as stage 2 publishes them (one pipelined batch, each notice
carrying its tweet's page-item tail, so every stream sends without a read). Reported: the
service's CPU (utime + stime) per stream event received, and its own event-delay histogram
(``timeline_live_event_delay_seconds``: from the notice's time to the event written). The
defaults are the live benchmark's 50% point for streams (3,000 stream events/s, 10,000 open).

Compare code versions in alternating runs (this machine is shared and noisy): ``--out`` writes
``<out>.json`` and ``<out>.md``; the default prints only.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from bench import stage_times
from bench.context import log
from bench.live_bench import DELAY, StreamClient, cpu_seconds, make_users, stream_namespace
from ops.faults.cluster import ServiceProcess
from ops.schema import drop_namespace
from policies.snowflake import SnowflakeGenerator
from policies.stream import Notice, encode_notice
from schemas.tweet_json import render_tail
from sinks.redis_live import LiveChannels


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings, workdir = await stream_namespace(args.workdir, "stream-events")
    service = ServiceProcess("query.service", settings, workdir / "query.log").start()
    clients: list[StreamClient] = []
    redis = Redis.from_url(settings.redis_url)
    try:
        await service.wait_ready()
        users = await make_users(settings, args.streams)
        for i in range(0, len(users), 20):
            batch = [StreamClient(service.port, uid, tok) for uid, tok in users[i:i + 20]]
            await asyncio.gather(*(c.open() for c in batch))
            clients.extend(batch)
        log(f"{len(clients)} streams open")
        live = LiveChannels(redis, prefix=settings.redis_prefix)
        ids = SnowflakeGenerator(worker_id=78)
        await asyncio.sleep(2)
        pid = service.proc.pid
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        seen = await asyncio.to_thread(stage_times.scrape, service.port, 5.0, {DELAY: ""})
        sent, bursts = 0, 0
        end = t0 + args.seconds
        while time.perf_counter() < end:
            began = time.perf_counter()
            pipe = redis.pipeline(transaction=False)
            now = time.time()
            for j in range(args.burst):
                user = users[(bursts * args.burst + j) % len(users)][0]
                tweet, author = ids.next_id(), 2 * 10**15 + j % 20
                notice = Notice(added=((tweet, author),), sent_at=now,
                                items=((tweet, author, render_tail(f"load {tweet}", int(now * 1000))),))
                pipe.publish(live.user(user), encode_notice(notice))
            await pipe.execute()
            sent, bursts = sent + args.burst, bursts + 1
            await asyncio.sleep(max(0.0, args.every - (time.perf_counter() - began)))
        await asyncio.sleep(2)
        cpu, wall = cpu_seconds(pid) - cpu0, time.perf_counter() - t0
        after = await asyncio.to_thread(stage_times.scrape, service.port, 5.0, {DELAY: ""})
        received = sum(len(c.arrivals) for c in clients)
        return {"command": "python -m bench.stream_events " + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "workdir")),
                "streams": len(clients), "events_sent": sent, "events_received": received,
                "wall_s": round(wall, 1), "service_cpu_s": round(cpu, 2),
                "service_cpu_ms_per_event": round(cpu * 1000 / max(1, received), 4),
                "service_event_delay": stage_times.between(seen, after, (DELAY, ""))}
    finally:
        for c in clients:
            await c.close()
        await redis.aclose()
        service.stop()
        await drop_namespace(settings)


def render(r: dict[str, Any]) -> str:
    d = r["service_event_delay"]
    within = d.get("share_within_ms", {})
    return "\n".join([
        "# The query service's cost per live stream event", "",
        f"`{r['command']}` ({time.strftime('%Y-%m-%d %H:%M')})", "",
        "| streams | events sent / received | service CPU ms per event | delay mean (ms) | p50 <= | p99 <= | within 25 / 50 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {r['streams']} | {r['events_sent']} / {r['events_received']} | {r['service_cpu_ms_per_event']} | "
        f"{d.get('mean_ms')} | {d.get('p50_ms_at_most')} | {d.get('p99_ms_at_most')} | "
        f"{within.get('25.0', float('nan')):.1%} / {within.get('50.0', float('nan')):.1%} |", ""])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_events", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--burst", type=int, default=300, help="notices per burst (one per stream)")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between bursts")
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--workdir", default="/tmp/tl-bench")
    parser.add_argument("--out", help="writes <out>.json and <out>.md")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.out:
        Path(args.out).with_suffix(".json").write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        Path(args.out).with_suffix(".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
