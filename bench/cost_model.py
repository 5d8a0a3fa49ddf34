"""What a delivery costs the machine, split into a part per row and a part per (user, push).

Stage 2 writes a batch's rows user by user: one Cassandra partition and one Redis sorted set
per user it touches, whatever the number of that user's rows in the batch. So the pipeline's
CPU per delivery falls as batches hold more rows per user: a burst's batches hold tens, a
steady feed's sub-second batches a few. Redis counts stage 2's ZADD calls (one per user and
chunk whose cached timeline exists: every active user's, in the benchmark), which gives the
pushes. The fit, over the loaded lag points (the burst's tweets come in bulk, the lag points'
one by one, as clients send them: a cost per row of its own):

    CPU-s per delivery = per_row + per_push * pushes / deliveries

by least squares; ``per_push`` and ``per_row`` are whole-machine CPU (every pipeline
process: the workers, Cassandra, Redis, Kafka, PostgreSQL; not the load generator).
"""
from __future__ import annotations

from typing import Any, Sequence

LOAD_GENERATOR = "bench (load generator)"


def point(name: str, deliveries: float, cpu_s: dict[str, float],
          redis_commands: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    """One window's figures: deliveries, pushes (Redis ZADD calls), rows per push, the
    pipeline's CPU-s per 1,000 deliveries. None without deliveries or Redis's counts."""
    pushes = next((c["calls"] for c in redis_commands or () if c["command"] == "zadd"), None)
    if not deliveries or not pushes:
        return None
    cpu = sum(v for k, v in cpu_s.items() if k != LOAD_GENERATOR)
    return {"window": name, "deliveries": round(deliveries), "pushes": pushes,
            "rows_per_push": round(deliveries / pushes, 2), "pipeline_cpu_s": round(cpu, 2),
            "cpu_s_per_1000_deliveries": round(cpu / deliveries * 1000, 4)}


def fit(points: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Least squares of CPU per delivery on pushes per delivery: ms per row and per push.
    None with fewer than two points or no spread in rows per push."""
    pts = [(p["pushes"] / p["deliveries"], p["pipeline_cpu_s"] / p["deliveries"]) for p in points]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 0:
        return None
    per_push = sum((x - mx) * (y - my) for x, y in pts) / sxx
    per_row = my - per_push * mx
    worst = max(abs(y - (per_row + per_push * x)) / y for x, y in pts)
    return {"ms_per_row": round(per_row * 1000, 4), "ms_per_push": round(per_push * 1000, 4),
            "largest_relative_error": round(worst, 3)}
