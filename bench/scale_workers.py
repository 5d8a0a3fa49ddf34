"""Fanout with 1, 2, 3 ... workers in one consumer group: deliveries/s and CPU per 1,000.

    python -m bench.scale_workers [--workers 1,2,3] [--deliveries 60000] [--partitions 12]

The benchmark's small graph (``bench/graph.py``) goes through the real pipeline once
(``bench/phases/graph_load.py``: activity, follows, every active timeline cached); then, for
each worker count, workers are added to the group (each its own process, RocksDB folder and
web port), the group settles (a warm-up burst to zero lag), and a burst of about
``--deliveries`` timeline rows is timed from the first publish to zero consumer lag with the
CPU of every worker and of the local servers read from /proc over the same window.

On one machine the total is bounded by its cores: what scales is the per-delivery cost, which
``docs/capacity.md`` multiplies out. The servers are whatever the settings point at (the
single-node or the cluster topology, ``TL_*`` variables); servers not on the default local
ports are not in the CPU table. Results: ``bench/results/scale-workers-<stamp>.json`` / ``.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.context import REPO, RunContext, log, provision, worker_pids
from bench.graph import TweetFactory, generate
from bench.phases import graph_load
from bench.sysstats import CpuWindow, ProcessSet, machine
from localenv.worker import Worker
from ops.schema import drop_namespace

RESULTS = REPO / "bench" / "results"


def per_1000(cpu_s: dict[str, float], deliveries: int) -> dict[str, float]:
    return {k: round(v * 1000 / deliveries, 4) for k, v in cpu_s.items()} if deliveries else {}


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [f"# Fanout with several workers ({meta['stamp']})", "",
             f"Machine: {meta['machine'].get('nproc')} cores; load average at start {meta['loadavg_start']}, "
             f"at end {meta.get('loadavg_end')}. Graph: {meta['graph']}. Topic partitions: {meta['partitions']}. "
             f"Bursts of ~{meta['deliveries_per_burst']:,} deliveries, timed from the first publish to zero "
             "consumer lag; CPU from /proc over the same window.", "",
             "| workers | deliveries/s | wall s | machine busy | CPU-s per 1,000 deliveries: workers (sum) "
             "| per worker | servers (sum) | whole pipeline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["runs"]:
        p = row["cpu_per_1000"]
        workers = sum(v for k, v in p.items() if k.startswith("worker"))
        servers = sum(v for k, v in p.items() if not k.startswith("worker") and k != "bench (load generator)")
        each = ", ".join(f"{p[k]:.3f}" for k in sorted(p) if k.startswith("worker"))
        lines.append(f"| {row['workers']} | {row['deliveries_per_s']:,.0f} | {row['wall_s']} | "
                     f"{row['machine_busy_share']:.0%} | {workers:.3f} | {each} | {servers:.3f} | "
                     f"{workers + servers:.3f} |")
    lines += ["", "CPU-s per process and run:", ""]
    for row in report["runs"]:
        lines.append(f"- {row['workers']} worker(s): {row['cpu_s']} (outside these processes: "
                     f"{row['outside_cpu_s']} CPU-s)")
    return "\n".join(lines) + "\n"


async def measure(ctx: RunContext, workers: list[Worker], deliveries: int) -> dict[str, Any]:
    settle = await ctx.burst(ctx.draw_tweets(deliveries / 10), f"settle {len(workers)} workers", timeout=900)
    procs = ctx.pids()
    single = {k: v for k, v in procs.single.items() if not k.startswith("worker")}  # named below
    for i, w in enumerate(workers):
        single.update(worker_pids(w, f"worker {i + 1}"))
    window = CpuWindow(ProcessSet(single=single, tree=procs.tree)).start()
    burst = await ctx.burst(ctx.draw_tweets(deliveries), f"burst with {len(workers)} workers", timeout=1800)
    cpu = window.stop()
    done = burst["expected_deliveries"]
    return {
        "workers": len(workers),
        "deliveries": done,
        "wall_s": round(burst["wall_s"], 1),
        "deliveries_per_s": round(done / burst["wall_s"], 1),
        "settle_wall_s": round(settle["wall_s"], 1),
        "cpu_s": cpu["cpu_s"],
        "cpu_per_1000": per_1000(cpu["cpu_s"], done),
        "machine_busy_share": cpu["machine_busy_share"] or 0.0,
        "outside_cpu_s": cpu["outside_these_processes_cpu_s"],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = RunContext(argparse.Namespace(scale="small", seed=args.seed, out_dir=args.out_dir, skip=set()))
    ctx.settings = dataclasses.replace(ctx.settings, topic_partitions=args.partitions)
    report: dict[str, Any] = {"meta": {"stamp": ctx.stamp, "machine": machine(), "partitions": args.partitions,
                                       "deliveries_per_burst": args.deliveries,
                                       "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
                              "runs": []}
    try:
        await provision(ctx.settings)
        ctx.graph = generate(ctx.spec, args.seed)
        ctx.factory = TweetFactory(ctx.graph)
        report["meta"]["graph"] = ctx.graph.describe()
        log("--- graph_load (one worker)")
        report["graph_load"] = await graph_load.run(ctx)
        for count in args.workers:
            ctx.start_extra_workers(count)
            log(f"--- {count} worker(s)")
            report["runs"].append(await measure(ctx, [ctx.worker, *ctx.extra_workers][:count], args.deliveries))
            log(f"{count} worker(s): {report['runs'][-1]['deliveries_per_s']} deliveries/s")
    finally:
        for w in ctx.extra_workers:
            await asyncio.to_thread(w.stop)
        if ctx.worker is not None:
            await asyncio.to_thread(ctx.worker.stop)
        if ctx.monitor is not None:
            await ctx.monitor.stop()
        report["cleanup"] = await drop_namespace(ctx.settings)
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    report["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_workers", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,3", help="worker counts, increasing (default 1,2,3)")
    parser.add_argument("--deliveries", type=int, default=60_000, help="timeline rows per timed burst")
    parser.add_argument("--partitions", type=int, default=12, help="topic partitions (divisible by the counts)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.workers = sorted({int(x) for x in args.workers.split(",") if x.strip()})
    if not args.workers or args.workers[0] < 1:
        parser.error("--workers needs counts >= 1")
    report = asyncio.run(run(args))
    out = args.out_dir / f"scale-workers-{report['meta']['stamp']}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(render(report))
    sys.stdout.write(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
