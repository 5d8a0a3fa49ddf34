"""Phase 9, ``reads_http``: HTTP reads via ``bench/read_bench.py`` (a subprocess with its own
isolated world, query service under uvicorn and load generator)."""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bench.context import REPO, RunContext, log


async def run(ctx: RunContext) -> dict[str, Any]:
    out = ctx.workdir / "read_bench.json"
    cmd = [sys.executable, "-m", "bench.read_bench", *ctx.cfg["read_bench_args"], "--out", str(out)]
    log(" ".join(cmd[1:]))
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    raw, _ = await proc.communicate()
    text = raw.decode(errors="replace")
    if not out.exists():
        raise RuntimeError(f"bench.read_bench exited {proc.returncode} without results:\n{text[-3000:]}")
    data = json.loads(out.read_text())
    scenarios = {}
    for key, s in (data.get("scenarios") or {}).items():
        lat = s.get("latency_ms", {})
        scenarios[key] = {
            "scenario": s.get("scenario", key), "concurrency": s.get("concurrency"),
            "requests_per_s": s.get("throughput_rps"), "ok": s.get("ok"), "requests": s.get("requests"),
            "problems": s.get("problems"),
            # Per read: the service's CPU (in-process mode) and Redis's time running the read's scripts.
            "service_cpu_ms_per_read": s.get("service_cpu_ms_per_read"),
            "redis_script_us_per_read": s.get("redis_script_us_per_read"),
            "latency": {k: lat.get(k) for k in ("p50", "p90", "p99", "p999", "max", "mean") if k in lat},
        }
    return {
        "how": "bench/read_bench.py (subprocess): its own isolated world and query service under uvicorn, "
               "load generator in a separate process; no concurrent writes",
        "command": " ".join(["python", *cmd[1:-2]]),
        "exit_code": proc.returncode,
        "population": data.get("population"),
        "scenarios": scenarios,
        "store_queries_per_read": data.get("store_queries_per_read"),
    }
