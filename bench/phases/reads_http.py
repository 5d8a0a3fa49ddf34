"""Phase 9, ``reads_http``: HTTP reads via ``bench/read_bench.py`` (a subprocess with its own
isolated world, query service under uvicorn and load generator); then, at the full scale, the
cache hit at concurrency 8 served by more processes (``python -m query.service --workers N``)."""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bench.context import REPO, RunContext, log


async def read_bench(ctx: RunContext, args: list[str], name: str) -> tuple[dict[str, Any], str, int | None]:
    out = ctx.workdir / f"{name}.json"
    cmd = [sys.executable, "-m", "bench.read_bench", *args, "--out", str(out)]
    log(" ".join(cmd[1:]))
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    raw, _ = await proc.communicate()
    text = raw.decode(errors="replace")
    if not out.exists():
        raise RuntimeError(f"bench.read_bench exited {proc.returncode} without results:\n{text[-3000:]}")
    return json.loads(out.read_text()), " ".join(["python", *cmd[1:-2]]), proc.returncode


def scenarios_of(data: dict[str, Any]) -> dict[str, Any]:
    processes = data.get("server_processes") or 1
    scenarios = {}
    for key, s in (data.get("scenarios") or {}).items():
        lat = s.get("latency_ms", {})
        cpu_ms = s.get("service_cpu_ms_per_read")
        scenarios[key if processes == 1 else f"{key}/{processes}p"] = {
            "scenario": s.get("scenario", key), "concurrency": s.get("concurrency"),
            "server_processes": processes, "client": s.get("client", "python"),
            "client_cpu_ms_per_request": s.get("client_cpu_ms_per_request"),
            "requests_per_s": s.get("throughput_rps"), "ok": s.get("ok"), "requests": s.get("requests"),
            "problems": s.get("problems"),
            # Per read: the service's CPU (all its processes and threads) and Redis's time running
            # the read's scripts; reads per CPU-second of the service is what one core of it serves.
            "service_cpu_ms_per_read": cpu_ms,
            "reads_per_service_cpu_s": round(1000 / cpu_ms) if cpu_ms else None,
            "redis_script_us_per_read": s.get("redis_script_us_per_read"),
            "latency": {k: lat.get(k) for k in ("p50", "p90", "p99", "p999", "max", "mean") if k in lat},
        }
    return scenarios


async def run(ctx: RunContext) -> dict[str, Any]:
    data, command, code = await read_bench(ctx, ctx.cfg["read_bench_args"], "read_bench")
    scenarios = scenarios_of(data)
    commands, codes = [command], [code]
    for i, args in enumerate(ctx.cfg.get("read_bench_processes_args") or []):
        more, command, code = await read_bench(ctx, args, f"read_bench_processes_{i}")
        scenarios.update(scenarios_of(more))
        commands.append(command)
        codes.append(code)
    return {
        "how": "bench/read_bench.py (subprocess): its own isolated world and query service under uvicorn "
               "(one process) or `python -m query.service --workers N` (N processes), load generator in a "
               "separate process (its Python client, then wrk, a C client, on the same targets: "
               "bench/wrk.py); no concurrent writes",
        "command": "; ".join(commands),
        "exit_code": max(c or 0 for c in codes),
        "population": data.get("population"),
        "scenarios": scenarios,
        "store_queries_per_read": data.get("store_queries_per_read"),
    }
