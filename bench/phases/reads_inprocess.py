"""Phase 5, ``reads_inprocess``: reads through ``query/reader.py`` in this process, on the same data.

50 reads per tweet while tweets keep flowing: cache hits, misses (key dropped before the
read, not timed), hybrid readers (who follow every celebrity) and typical users.
"""
from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

from bench.context import Publisher, RunContext, open_reader, paced, timed_page
from bench.latency import latency_summary
from bench.sysstats import CpuWindow


async def run(ctx: RunContext) -> dict[str, Any]:
    g = ctx.graph
    cfg = ctx.cfg
    pub = await Publisher(ctx.settings).start()
    try:
        async with open_reader(ctx.settings) as reader:
            celebs = [i for i in range(g.n) if g.celebrity[i]]
            heavy = set(g.heavy_pure) | set(g.heavy_hybrid)
            fol = g.following()
            typical_pool = [i for i in range(g.n) if g.active[i] and g.pure[i] and i not in heavy and fol[i]]
            typical = random.Random(ctx.args.seed + 41).sample(typical_pool, min(100, len(typical_pool)))
            hit = [g.ids[i] for i in g.heavy_pure]
            hybrid = [g.ids[i] for i in g.heavy_hybrid]
            ctx.readers = {"hit": hit, "hybrid": hybrid, "typical": [g.ids[i] for i in typical]}
            groups = {"cache_hit": (hit[0::2], False), "cache_miss": (hit[1::2], True),
                      f"hybrid_{len(celebs)}_celebrities": (hybrid, False),
                      "typical_user_cache_hit": (ctx.readers["typical"], False)}
            results: dict[str, list[float]] = {k: [] for k in groups}
            sources: dict[str, dict[str, int]] = {k: {} for k in groups}
            sizes: dict[str, list[int]] = {k: [] for k in groups}

            async def read(name: str, i: int) -> None:
                users, drop = groups[name]
                took, page = await timed_page(reader, users[i % len(users)], drop)
                results[name].append(took)
                sources[name][page.source] = sources[name].get(page.source, 0) + 1
                sizes[name].append(len(page.tweets))

            # Capacity of in-process reads (closed loop, 4 in flight, 2 s) to size the mix.
            names = list(groups)
            n_done = 0
            t_end = time.perf_counter() + 2.0

            async def closed() -> None:
                nonlocal n_done
                while time.perf_counter() < t_end:
                    await read(names[n_done % len(names)], n_done)
                    n_done += 1
            await asyncio.gather(*(closed() for _ in range(4)))
            closed_rate = n_done / 2.0
            for k in results:
                results[k].clear()
                sizes[k].clear()
                sources[k].clear()
            read_rate = max(10.0, 0.4 * closed_rate)
            tweet_rate = read_rate / 50
            sem = asyncio.Semaphore(16)
            inflight: list[asyncio.Task] = []
            late = 0

            async def bounded(name: str, i: int) -> None:
                async with sem:
                    await read(name, i)

            async def issue(i: int) -> None:
                nonlocal late
                if sem.locked():
                    late += 1
                inflight.append(asyncio.create_task(bounded(names[i % len(names)], i // len(names))))

            tweets_sent = 0
            rng = random.Random(ctx.args.seed + 23)

            async def tweet(i: int) -> None:
                nonlocal tweets_sent
                await pub.send(ctx.factory.make(g.authors(1, rng)[0]))
                tweets_sent += 1

            window = CpuWindow(ctx.pids()).start()
            began = time.perf_counter()
            reads_issued, _ = await asyncio.gather(paced(read_rate, cfg["mixed_s"], issue),
                                                   paced(tweet_rate, cfg["mixed_s"], tweet))
            await asyncio.gather(*inflight)
            elapsed = time.perf_counter() - began
            cpu = window.stop()
    finally:
        await pub.stop()
    return {
        "how": "HomeTimelineReader.page(limit=50) in this process (no HTTP), paced open loop, <=16 in flight; "
               "tweets published at 1/50 of the read rate meanwhile; readers: the graph's heavy readers "
               "(following ~150 accounts; cache_hit and cache_miss are disjoint halves) and typical users",
        "closed_loop_capacity_reads_per_s": round(closed_rate, 1),
        "read_rate_per_s": round(reads_issued / elapsed, 1),
        "tweet_rate_per_s": round(tweets_sent / elapsed, 2),
        "read_write_ratio": round(reads_issued / max(1, tweets_sent), 1),
        "duration_s": round(elapsed, 1),
        "reads_started_late (all 16 slots busy)": late,
        "scenarios": {
            k: {"latency": latency_summary(v), "sources": sources[k],
                "mean_tweets_per_page": round(statistics.fmean(sizes[k]), 1) if sizes[k] else 0,
                "readers": len(groups[k][0])}
            for k, v in results.items()
        },
        "machine_busy_share": cpu["machine_busy_share"],
    }
