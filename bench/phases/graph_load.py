"""Phase 2, ``graph_load``: the seeded graph goes through the real pipeline.

A Faust worker subprocess (``bench/profile_worker.py``, so that phase 6 can profile it)
starts; ``user_active`` events (60% of users last seen 60 days ago), then every follow,
are published and consumed to zero lag; every active user's timeline is then read once,
so it is cached in Redis, as the design has it (pushes only touch cached timelines).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.context import READ_LIMIT, RunContext, bar, open_reader
from bench.profile_worker import ProfiledWorker
from cpu_priority import session_nice
from localenv.workload import produce
from ops.lag import LagMonitor


async def run(ctx: RunContext) -> dict[str, Any]:
    g = ctx.graph
    assert g is not None
    ctx.worker = ProfiledWorker(ctx.settings, ctx.workdir / "worker.log", ctx.workdir / "profile").start()
    ctx.start_extra_workers(ctx.worker_count)
    ctx.monitor = await LagMonitor(ctx.settings).start()
    now = int(time.time() * 1000)
    t0 = time.time()
    await produce(ctx.settings, g.activity_events(now))
    started = await ctx.wait_zero(timeout=300, desc="worker start + activity")
    # The worker's CPU priority on this shared machine (cpu_priority.py), set once it started.
    ctx.report["meta"]["worker_session_nice"] = session_nice(ctx.worker.proc.pid)
    ctx.report["meta"]["worker_layout"] = ctx.settings.worker_layout
    follows = list(g.follow_events(now))
    t1 = time.time()
    await produce(ctx.settings, follows)
    done = await ctx.wait_zero(timeout=7200, desc="follows")
    follow_s = done.zero_at - t1
    # Cache every active user's timeline (the design keeps active users' timelines hot).
    async with open_reader(ctx.settings) as reader:
        active = [g.ids[i] for i in range(g.n) if g.active[i]]
        sem = asyncio.Semaphore(16)
        with bar(desc="warm caches", total=len(active), unit="user") as pb:
            async def warm(uid: int) -> None:
                async with sem:
                    await reader.page(uid, limit=READ_LIMIT)
                pb.update(1)
            await asyncio.gather(*(warm(u) for u in active))
        async with reader.redis.pipeline(transaction=False) as pipe:
            for u in active:
                pipe.exists(reader.timelines.key(u))
            cached = sum(await pipe.execute())
    return {
        "worker_start_and_activity_s": round(started.zero_at - t0, 1),
        "activity_events": g.n,
        "follow_events": len(follows),
        "follows_s": round(follow_s, 1),
        "follows_per_s": round(len(follows) / follow_s, 1),
        "active_users_cached": cached,
        "active_users": len(active),
    }
