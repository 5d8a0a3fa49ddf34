"""Phase 6, ``profile``: the worker's main thread under pyinstrument during a burst
(``bench/profile_worker.py``), with a CPU sampler of all its threads."""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from bench.context import REPO, RunContext
from bench.profile_worker import summarize_session
from bench.sysstats import CpuWindow


async def run(ctx: RunContext) -> dict[str, Any]:
    capacity = ctx.capacity or 1000.0
    authors = ctx.draw_tweets(capacity * ctx.cfg["profile_s"])
    window = CpuWindow(ctx.pids(), threads_of=ctx.worker.profiled.pid)
    ctx.worker.profile_start()
    window.start()
    burst = await ctx.burst(authors, "profiled burst")
    cpu = window.stop()
    ok = await asyncio.to_thread(ctx.worker.profile_stop)
    if not ok:
        raise RuntimeError("the profiler did not write its report")
    prefix = Path(str(ctx.worker.prefix))
    text_out = ctx.out_dir / f"run-{ctx.stamp}.profile.txt"
    shutil.copyfile(prefix.with_suffix(".txt"), text_out)
    summary = await asyncio.to_thread(summarize_session, prefix.with_suffix(".pyisession"))
    threads_file = prefix.with_suffix(".threads.json")
    summary["all_threads_cpu_sampler"] = json.loads(threads_file.read_text()) if threads_file.exists() else None
    rate = burst["expected_deliveries"] / burst["wall_s"]
    return {
        "how": "pyinstrument (1 ms sampling, wall clock, main thread only) started and stopped by signals "
               "around a burst; bench/profile_worker.py",
        "deliveries": burst["expected_deliveries"],
        "wall_s": round(burst["wall_s"], 1),
        "deliveries_per_s_while_profiled": round(rate, 1),
        "profiler_slowdown": round(capacity / rate, 2) if rate else None,
        "process_cpu_s": cpu["cpu_s"],
        "worker_threads_cpu_s": cpu.get("worker_threads_cpu_s"),
        "text_report": str(text_out.relative_to(REPO)) if text_out.is_relative_to(REPO) else str(text_out),
        **summary,
    }
