"""Latency summaries of the benchmarks: percentiles of latencies in seconds, in milliseconds."""
from __future__ import annotations

import statistics
from typing import Any, Iterable, Sequence


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def latency_ms(ordered: list[float], quantiles: Sequence[float] = (0.50, 0.90, 0.99)) -> dict[str, float | None]:
    """Percentiles (``p50``, ``p90``, ``p99``, ``p999`` for 0.999 ...), max and mean of sorted
    latencies in seconds, in milliseconds."""
    out: dict[str, float | None] = {
        "p" + format(q * 100, "g").replace(".", ""): round(percentile(ordered, q) * 1000, 2) for q in quantiles
    }
    out["max"] = round(ordered[-1] * 1000, 2) if ordered else None
    out["mean"] = round(statistics.fmean(ordered) * 1000, 2) if ordered else None
    return out


def latency_summary(values_s: Iterable[float]) -> dict[str, Any]:
    """``count``, ``p50``, ``p90``, ``p99``, ``p999``, ``max`` and ``mean`` (ms) of latencies in
    seconds, in any order; only ``count`` when there are none."""
    ordered = sorted(values_s)
    if not ordered:
        return {"count": 0}
    return {"count": len(ordered), **latency_ms(ordered, (0.50, 0.90, 0.99, 0.999))}
