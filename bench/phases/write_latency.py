"""Phase 8, ``write_latency``: POST /v1/tweets latency, with ``bench/post_bench.py``'s service
(uvicorn in this process) and its raw keep-alive load generator in a process of its own."""
from __future__ import annotations

from typing import Any

from bench import post_bench
from bench.context import RunContext
from bench.http_load import load_process
from bench.latency import latency_summary


async def run(ctx: RunContext) -> dict[str, Any]:
    """One point per ``post_concurrency`` (a tuple); the result's top level is the highest
    concurrency's point, ``points`` has them all (the targets ask for 8 and 32)."""
    cfg = ctx.cfg
    points = []
    for conc in cfg["post_concurrency"]:
        points.append(await _point(ctx, conc, f"b{ctx.tag[-6:]}c{conc}"))
    return {**points[-1], "points": points}


async def _point(ctx: RunContext, conc: int, handles: str) -> dict[str, Any]:
    cfg = ctx.cfg
    async with post_bench.service(ctx.settings, "uvicorn", conc) as client:
        health = (await client.get("/healthz")).json()
        auths = await post_bench.sign_up(client, handles, cfg["post_users"])
        with load_process() as in_process:
            latencies, statuses, errors, elapsed = await in_process(
                post_bench.load_in_process, str(client.base_url), auths, cfg["post_requests"], conc,
                min(100, cfg["post_requests"] // 3))
    ok = statuses.get(201, 0)
    return {
        "how": "bench/post_bench.py: the Post service under uvicorn in this process, its raw keep-alive "
               "HTTP/1.1 load generator in a separate process; 201 only after Kafka acks (acks=all)",
        "requests": cfg["post_requests"],
        "concurrency": conc,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "transport_errors": errors,
        "requests_per_s": round(ok / elapsed, 1) if elapsed else None,
        "latency": latency_summary(latencies),
        "health": health.get("status", health) if isinstance(health, dict) else health,
    }
