"""The fault-injection suite from the command line.

    python -m ops.faults [--plan short|full] [--layout one|split] [--seed N] [--keep-servers] [--out-dir DIR]

``short`` (what CI runs, through ``tests/integration/test_faults.py``): 2 worker SIGKILLs,
a Redis SIGKILL (its data lost), a 5 s SIGSTOP of Kafka. ``full``: 10 worker SIGKILLs;
SIGKILL and restart of Kafka, Cassandra, Redis and PostgreSQL; a 20 s SIGSTOP of each.
The suite runs on a private set of the four servers (``.state/faults/<checkout>/``, its own
ports), started if needed and stopped at the end (``--keep-servers`` leaves them running
for the next run). Writes ``<out-dir>/faults-<plan>-<time>.json`` and ``.md`` (default
``bench/results``). Exit code 0 when every fault passed its checks.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from localenv.host import REPO
from ops.faults.plan import RESUME_TARGET_S, Config
from ops.faults.suite import run_suite


def render_md(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"# Fault suite, plan `{report['plan']}` ({report['timestamp']})",
        "",
        f"Command: `python -m ops.faults --plan {report['plan']} --seed {cfg['seed']}"
        f"{' --layout ' + cfg['layout'] if cfg.get('layout', 'one') != 'one' else ''}`. "
        f"Result: **{'passed' if report['ok'] else 'FAILED'}** in {report.get('duration_s')} s.",
        "",
        f"Private servers {report.get('servers', {}).get('state')} (base port "
        f"{report.get('servers', {}).get('base_port')}); namespace `{report.get('namespace')}`, 4 partitions, "
        f"two workers{' (a process per role each)' if cfg.get('layout') == 'split' else ''} (named, supervised: "
        "a dead one's member is removed from its group at once, then it is started again), Post and query "
        "services as child processes. Load through the HTTP API: "
        f"{cfg['writes_per_s']:g} writes/s (tweets with an Idempotency-Key retried on 503, deletes, follows, "
        f"unfollows, a celebrity falling below the threshold and back) and {cfg['reads_per_s']:g} home-timeline "
        f"reads/s over {report.get('scenario', {}).get('users')} users; a probe tweet on every partition every 0.5 s.",
        "",
        "| # | fault | in flight (events / requests) | deliveries resumed after | lag 0 after load stopped | "
        "differences | accepted tweets missing | answers (503 with detail / bad) | ok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rec in report["cycles"]:
        if "error" in rec:
            lines.append(f"| {rec['index'] + 1} | {rec['fault']} ({rec['target']}) | | | | | | | **error**: "
                         f"`{rec['error'][:200]}` |")
            continue
        by = rec["http"]["by_verdict"]
        target = rec["target"]
        extra = ""
        if rec["kind"] == "worker_kill":
            extra = f" (its partitions {rec['resume_partitions']})"
        elif "server_back_after_s" in rec:
            extra = f" (server back after {rec['server_back_after_s']} s)"
        lines.append(
            f"| {rec['index'] + 1} | {rec['fault']} ({target}) | {rec.get('in_flight_events')} / "
            f"{rec.get('in_flight_requests')} | {rec.get('resumed_s')} s{extra} | "
            f"{rec.get('lag_zero_after_s')} s{' STUCK' if rec['stuck'] else ''} | {rec['differences']} of "
            f"{rec['users_checked']} users | {rec['accepted_missing_from_log']} of {rec['accepted_tweets']} | "
            f"{by.get('outage', 0)} / {by.get('bad', 0)} of {rec['http']['requests']} | "
            f"{'yes' if rec['ok'] else '**no**'} |")
    lines += ["", f"Worker kills pass only if deliveries resume on the killed worker's partitions within "
              f"{RESUME_TARGET_S:g} s.", ""]
    lines.append(f"Probe latency (accepted -> in the follower's Cassandra timeline) over the run: "
                 f"{report.get('probe_latency_s')}.")
    lines.append(f"Scenario: {report.get('scenario')}.")
    for rec in report["cycles"]:
        if not rec.get("ok"):
            lines += ["", f"## Fault {rec['index'] + 1} ({rec['fault']}) failed", "", "```",
                      json.dumps({k: v for k, v in rec.items() if k not in ("logs",)}, indent=1, default=str)[:6000],
                      "```"]
            if rec.get("logs"):
                lines += ["", "```", rec["logs"][-6000:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default="short",
                        help="short, full, or faults kind:target[:pause_s],... (e.g. server_kill:cassandra)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--layout", choices=("one", "split"), default="one",
                        help="the workers' TL_WORKER_LAYOUT: one process each, or a process per role")
    parser.add_argument("--keep-servers", action="store_true",
                        help="leave the private servers running afterwards (and a failed run's namespace)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("cassandra", "aiokafka", "kafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = asyncio.run(run_suite(Config(plan=args.plan, seed=args.seed, keep_servers=args.keep_servers,
                                        layout=args.layout), echo))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    label = args.plan if args.plan in ("short", "full") else "custom"
    base = args.out_dir / f"faults-{label}-{report['timestamp']}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    base.with_suffix(".md").write_text(render_md(report))
    print(render_md(report))
    echo(f"wrote {base}.json and .md")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
