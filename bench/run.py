"""The benchmark: one command, every figure, in an isolated namespace cleaned up afterwards.

    python -m bench.run [--scale small|full] [--seed N] [--out-dir DIR] [--no-latest]

Writes ``<out-dir>/run-<timestamp>.json`` and ``.md`` (default ``bench/results``) and
copies them to ``latest.json`` / ``latest.md`` (unless ``--no-latest``). The run gets
its own Kafka topics (prefix ``bench-<tag>-``, Faust's changelogs included), Cassandra
keyspace, Redis key prefix, consumer group, RocksDB folder and PostgreSQL schema
(``TL_POSTGRES_SCHEMA``), all removed at the end, whatever happens.

Phases, one module each in ``bench/phases/`` (``bench/graph.py`` builds the seeded social
graph; ``bench/context.py`` holds the run's state; ``bench/report.py`` renders the Markdown
and re-renders it from a results JSON):

1. ``ceilings``: raw ceilings of Redis, Cassandra and Kafka from Python;
2. ``graph_load``: the graph goes through the real pipeline (one Faust worker: a subprocess
   per stage in the split layout, ``bench.context.BENCH_WORKER_LAYOUT``), and every active
   user's timeline is cached;
3. ``fanout_throughput``: deliveries/s counted in Cassandra, CPU of every process over the
   same window (``cpu_per_1000_deliveries``) and the writes saved (``write_savings``);
4. ``fanout_lag``: Kafka ack -> visible in followers' cached timelines, at steady rates;
5. ``reads_inprocess``: ``query/reader.py`` in this process, 50 reads per tweet;
6. ``profile``: the worker's main thread under pyinstrument during a burst; the worker is
   then stopped;
7. ``pg_pull_baseline``: the pull model in PostgreSQL alone on the same graph;
8. ``write_latency``: POST /v1/tweets (``bench/post_bench.py``'s service and load generator);
9. ``reads_http``: HTTP reads via ``bench/read_bench.py`` (its own isolated world, subprocess).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.context import REPO, SCALES, RunContext, log, provision
from bench.graph import TweetFactory, generate
from bench.phases import (ceilings, fanout_lag, fanout_throughput, graph_load, pg_pull_baseline, profile,
                          reads_http, reads_inprocess, write_latency)
from bench.report import render_md
from bench.sysstats import cassandra_durability, machine
from bench.targets import evaluate_targets
from ops.schema import drop_namespace

RESULTS = REPO / "bench" / "results"
# Phases 3-6 need the worker and the graph in the stores: they run only if graph_load worked.
ON_THE_PIPELINE = (fanout_throughput, fanout_lag, reads_inprocess, profile)


def phase_name(module: Any) -> str:
    return module.__name__.rsplit(".", 1)[1]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.ctx = RunContext(args)
        self.phase_times: dict[str, float] = {}

    async def section(self, module: Any) -> None:
        """Run one phase into the report: its result, ``skipped``, or its ``error``."""
        ctx, name = self.ctx, phase_name(module)
        if name in ctx.args.skip:
            ctx.report[name] = {"skipped": True}
            return
        log(f"--- {name}")
        began = time.monotonic()
        try:
            ctx.report[name] = await module.run(ctx)
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            log(f"{name} failed: {exc!r}")
            traceback.print_exc()
            ctx.report[name] = {"error": repr(exc)}
            if ctx.worker is not None and not ctx.worker.alive():
                ctx.report[name]["worker_log_tail"] = ctx.worker.log_tail(30)
        self.phase_times[name] = round(time.monotonic() - began, 1)

    async def run(self) -> dict[str, Any]:
        ctx = self.ctx
        settings = ctx.settings
        began = time.monotonic()
        ctx.report["meta"] = {
            "timestamp": ctx.stamp, "scale": ctx.args.scale, "seed": ctx.args.seed, "tag": ctx.tag,
            "machine": machine(), "git_commit": _git_rev(), "workers": ctx.worker_count,
            "note": ("Kafka, Cassandra, Redis, PostgreSQL, the worker and this load generator share this machine; "
                     "other people's test runs may share it too (see loadavg and outside_these_processes_cpu_s)."),
        }
        try:
            await provision(settings)
            ctx.report["meta"]["cassandra"] = await asyncio.to_thread(cassandra_durability, settings)
            ctx.graph = generate(ctx.spec, ctx.args.seed)
            ctx.factory = TweetFactory(ctx.graph)
            ctx.report["dataset"] = {"graph": ctx.graph.describe(), "partitions": settings.topic_partitions,
                                     "celebrity_hysteresis": settings.celebrity_hysteresis,
                                     "inactive_after_days": settings.inactive_after_ms // 86_400_000,
                                     "timeline_cap": settings.timeline_cap}
            await self.section(ceilings)
            await self.section(graph_load)
            if "error" not in ctx.report.get("graph_load", {}):
                for module in ON_THE_PIPELINE:
                    await self.section(module)
            await self.stop_worker()
            for module in (pg_pull_baseline, write_latency, reads_http):
                await self.section(module)
        finally:
            await self.stop_worker()
            if ctx.monitor is not None:
                await ctx.monitor.stop()
            done = await drop_namespace(settings)
            done["note"] = ("the consumer group bench-<tag> is left to Kafka's offset retention "
                            "(aiokafka cannot delete groups)")
            ctx.report["cleanup"] = done
            shutil.rmtree(ctx.workdir, ignore_errors=True)
        ctx.report["meta"]["duration_s"] = round(time.monotonic() - began, 1)
        ctx.report["meta"]["phase_s"] = self.phase_times
        ctx.report["meta"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        ctx.report["targets"] = evaluate_targets(ctx.report)
        return ctx.report

    async def stop_worker(self) -> None:
        """Stop the worker (if running) and keep the tail of its log beside the results."""
        ctx = self.ctx
        for w in ctx.extra_workers:
            await asyncio.to_thread(w.stop)
        ctx.extra_workers = []
        if ctx.worker is not None:
            log_path = ctx.worker.log_path
            await asyncio.to_thread(ctx.worker.stop)
            keep = ctx.out_dir / f"run-{ctx.stamp}.worker.log"
            try:
                keep.write_text("\n".join(log_path.read_text(errors="replace").splitlines()[-400:]) + "\n")
            except OSError:
                pass
            ctx.worker = None


def _git_rev() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + ("+uncommitted" if dirty else "")
    except Exception:  # noqa: BLE001
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where run-<timestamp>.json/.md go")
    parser.add_argument("--no-latest", action="store_true", help="do not copy the results to latest.json/.md")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip (debugging)")
    args = parser.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    from localenv.services import ensure_up
    from settings import get_settings

    ensure_up(get_settings())
    bench = Bench(args)
    report = asyncio.run(bench.run())
    stem = args.out_dir / f"run-{bench.ctx.stamp}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(render_md(report))
    if not args.no_latest:
        shutil.copyfile(stem.with_suffix(".json"), args.out_dir / "latest.json")
        shutil.copyfile(stem.with_suffix(".md"), args.out_dir / "latest.md")
    print(f"wrote {stem}.json and .md" + ("" if args.no_latest else " (and latest.*)"))
    for t in report.get("targets", []):
        print(f"  {t['status']:>6}  {t['target']}: {t['value']} (goal {t['goal']}) {t['detail']}")
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    if failed:
        print(f"sections that failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
