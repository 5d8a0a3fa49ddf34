"""Where the worker's time goes: its own histograms, read before and after a load point.

The worker exports, per stage, ``timeline_batch_seconds`` (one agent batch, writes
included) and ``timeline_batch_events`` (events per batch), and per store operation
``timeline_sink_seconds{what}`` (retries included). Two scrapes of ``/metrics`` around a
load point, diffed, say how many batches each stage ran there, how big they were, how
long one took, and which store operation took what share of a stage's time.

``parse``, ``diff`` and ``between`` (one histogram between two scrapes, for any process's
``/metrics``: ``bench/live_bench.py`` reads the query service's) are pure (unit-tested);
``scrape`` is the one HTTP call.
"""
from __future__ import annotations

import urllib.request
from typing import Any, Iterable

from prometheus_client.parser import text_string_to_metric_families

HISTOGRAMS = {
    "timeline_batch_seconds": "stage",
    "timeline_batch_events": "stage",
    "timeline_sink_seconds": "what",
}
Snapshot = dict[tuple[str, str], dict[str, Any]]  # (histogram, label value) -> count, sum, buckets


def parse(text: str, histograms: dict[str, str] = HISTOGRAMS) -> Snapshot:
    """The ``histograms`` (name: its label, "" for none) of a ``/metrics`` text: count, sum and
    cumulative buckets per label value."""
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        label = histograms.get(family.name)
        if label is None:
            continue
        for s in family.samples:
            key = (family.name, s.labels.get(label, ""))
            h = out.setdefault(key, {"count": 0.0, "sum": 0.0, "buckets": {}})
            if s.name.endswith("_count"):
                h["count"] = s.value
            elif s.name.endswith("_sum"):
                h["sum"] = s.value
            elif s.name.endswith("_bucket"):
                h["buckets"][float(s.labels["le"])] = s.value
    return out


def _quantile(buckets: dict[float, float], count: float, q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile (what a histogram can say)."""
    if count <= 0:
        return None
    rank = q * count
    for le in sorted(buckets):
        if buckets[le] >= rank:
            return le
    return None


def diff(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """What happened between two snapshots: per stage batches, events per batch and batch
    time; per store operation calls, mean time and its share of all store time."""
    delta: Snapshot = {}
    for key, h in after.items():
        b = before.get(key, {"count": 0.0, "sum": 0.0, "buckets": {}})
        count = h["count"] - b["count"]
        if count <= 0:
            continue
        buckets = {le: v - b["buckets"].get(le, 0.0) for le, v in h["buckets"].items()}
        delta[key] = {"count": count, "sum": h["sum"] - b["sum"], "buckets": buckets}
    stages: dict[str, Any] = {}
    for (name, stage), h in delta.items():
        if name == "timeline_batch_seconds":
            s = stages.setdefault(stage, {})
            s["batches"] = int(h["count"])
            s["busy_s"] = round(h["sum"], 3)
            s["mean_batch_ms"] = round(1000 * h["sum"] / h["count"], 2)
            p99 = _quantile(h["buckets"], h["count"], 0.99)
            s["p99_batch_ms_at_most"] = None if p99 is None or p99 == float("inf") else round(1000 * p99, 1)
        elif name == "timeline_batch_events":
            s = stages.setdefault(stage, {})
            s["events"] = int(h["sum"])
            s["mean_events_per_batch"] = round(h["sum"] / h["count"], 1)
    total_store = sum(h["sum"] for (name, _), h in delta.items() if name == "timeline_sink_seconds")
    ops = {
        what: {"calls": int(h["count"]), "mean_ms": round(1000 * h["sum"] / h["count"], 2),
               "total_s": round(h["sum"], 3),
               "share_of_store_time": round(h["sum"] / total_store, 3) if total_store else 0.0}
        for (name, what), h in sorted(delta.items(), key=lambda kv: -kv[1]["sum"])
        if name == "timeline_sink_seconds"
    }
    return {"stages": stages, "store_ops": ops}


def scrape(port: int, timeout: float = 5.0, histograms: dict[str, str] = HISTOGRAMS) -> Snapshot:
    """The histograms now, from a process's ``GET /metrics`` (the worker's Faust web server by default)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return parse(resp.read().decode(), histograms)


def scrape_all(ports: Iterable[int], timeout: float = 5.0) -> Snapshot:
    """``scrape`` of several processes (a worker's, one per stage in the split layout), each
    histogram summed over them, as Prometheus would."""
    total: Snapshot = {}
    for port in ports:
        for key, h in scrape(port, timeout).items():
            t = total.setdefault(key, {"count": 0.0, "sum": 0.0, "buckets": {}})
            t["count"] += h["count"]
            t["sum"] += h["sum"]
            for le, v in h["buckets"].items():
                t["buckets"][le] = t["buckets"].get(le, 0.0) + v
    return total


def between(before: Snapshot, after: Snapshot, key: tuple[str, str]) -> dict[str, Any]:
    """One histogram of seconds between two snapshots: observations, mean, the p50 / p99 as the
    upper bounds of their buckets, and the share at or below each bucket bound (ms)."""
    empty: dict[str, Any] = {"count": 0.0, "sum": 0.0, "buckets": {}}
    a, b = after.get(key, empty), before.get(key, empty)
    count = a["count"] - b["count"]
    if count <= 0:
        return {"count": 0}
    buckets = {le: v - b["buckets"].get(le, 0.0) for le, v in a["buckets"].items()}

    def ms(q: float) -> float | None:
        le = _quantile(buckets, count, q)
        return None if le is None or le == float("inf") else round(1000 * le, 1)

    return {"count": int(count), "mean_ms": round(1000 * (a["sum"] - b["sum"]) / count, 1),
            "p50_ms_at_most": ms(0.5), "p99_ms_at_most": ms(0.99),
            "share_within_ms": {str(round(1000 * le, 1)): round(v / count, 4) for le, v in sorted(buckets.items())
                                if le != float("inf")}}
