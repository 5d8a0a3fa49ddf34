"""The soak's verdict (is memory and consumer lag flat?) and its Markdown report; pure."""
from __future__ import annotations

import json
import statistics
from typing import Any

RSS_GROWTH_LIMIT = 0.10
LAG_FLOOR = 2_000  # messages: below this a lag "peak" is noise (a second of work)
DRAIN_LIMIT_S = 60.0


def verdict(samples: list[dict[str, Any]], warmup_min: float, drain_s: float | None) -> dict[str, Any]:
    after = [x for x in samples if x["t_s"] >= warmup_min * 60]
    out: dict[str, Any] = {"samples_after_warmup": len(after), "warmup_min": warmup_min}
    if len(after) < 6:
        out["flat"] = False
        out["why"] = "too few samples after the warm-up"
        return out
    per_min = max(1, int(round(60 / max(1e-9, (after[1]["t_s"] - after[0]["t_s"])))))
    rss: dict[str, Any] = {}
    for name in after[0]["rss_mb"]:
        values = [x["rss_mb"][name] for x in after if x["rss_mb"].get(name)]
        if len(values) < 2:
            continue
        first = statistics.median(values[:per_min])
        last = statistics.median(values[-per_min:])
        growth = (last - first) / first if first else 0.0
        slope = _slope([x["t_s"] / 60 for x in after if x["rss_mb"].get(name)], values)
        rss[name] = {"first_min_mb": round(first, 1), "last_min_mb": round(last, 1), "growth": round(growth, 3),
                     "slope_mb_per_min": round(slope, 2), "max_mb": max(values),
                     "flat": name == "load_generator" or growth < RSS_GROWTH_LIMIT}
    third = max(1, len(after) // 3)
    lags = [x["lag_total"] for x in after]
    first_peak, last_peak = max(lags[:third]), max(lags[-third:])
    lag_flat = last_peak <= max(2 * first_peak, LAG_FLOOR)
    drained = drain_s is not None and drain_s <= DRAIN_LIMIT_S
    near_zero = sum(1 for v in lags if v <= LAG_FLOOR) / len(lags)
    out.update(
        rss=rss,
        lag={"first_third_peak": first_peak, "last_third_peak": last_peak, "median": statistics.median(lags),
             "share_of_samples_under_floor": round(near_zero, 3), "floor": LAG_FLOOR, "trend_flat": lag_flat,
             "drain_s": drain_s, "drained_within_limit": drained},
    )
    out["flat"] = all(v["flat"] for v in rss.values()) and lag_flat and drained
    reads = sum(x.get("reads_per_s", 0) for x in samples)
    tweets = sum(x.get("tweets_per_s", 0) for x in samples)
    out["achieved"] = {"tweets_per_s": round(tweets / len(samples), 1), "reads_per_s": round(reads / len(samples), 1),
                       "reads_per_tweet": round(reads / tweets, 2) if tweets else None,
                       "machine_busy_median": statistics.median(x.get("machine_busy") or 0 for x in samples)}
    return out


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def render_md(r: dict[str, Any]) -> str:
    v, p = r.get("verdict", {}), r.get("plan", {})
    lines = [f"# Soak {r['timestamp']}", "",
             f"Command: `{r['command']}`. Result: **{'flat' if v.get('flat') else 'NOT flat'}**"
             + (f" ({v['why']})" if v.get("why") else "") + ".", "",
             f"Machine: {r['machine'].get('nproc')} cores, load average at start {r['machine'].get('loadavg_at_start')}; "
             "the servers, the worker, both services and this load generator share it (and other people's "
             "tests may too: see the busy share per sample).", "",
             f"Plan: {json.dumps(p)}", "", f"Set-up: {json.dumps(r.get('setup', {}))}", ""]
    if v.get("rss"):
        lines += ["| process | RSS first minute after warm-up (MB) | last minute (MB) | growth | slope MB/min | flat |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, x in v["rss"].items():
            lines.append(f"| {name} | {x['first_min_mb']} | {x['last_min_mb']} | {x['growth']:.1%} | "
                         f"{x['slope_mb_per_min']} | {'yes' if x['flat'] else '**no**'} |")
        lag = v["lag"]
        lines += ["", f"Achieved over the run: {json.dumps(v.get('achieved'))}."]
        lines += ["", f"Consumer lag after warm-up: peak {lag['first_third_peak']} in the first third, "
                  f"{lag['last_third_peak']} in the last third, median {lag['median']}, "
                  f"{lag['share_of_samples_under_floor']:.0%} of samples under {lag['floor']} messages; "
                  f"back to 0 {lag['drain_s']} s after the load stopped "
                  f"({'flat' if lag['trend_flat'] and lag['drained_within_limit'] else '**not flat**'}).", ""]
    lines += ["| t (s) | lag | tweets/s | reads/s | reads not sent | read p50/p99 ms | errors | worker MB | "
              "post MB | query MB | machine busy |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for x in r.get("samples", []):
        errors = {**{f"read {k}": n for k, n in x["read_errors"].items()},
                  **{f"tweet {k}": n for k, n in x["tweet_errors"].items()}}
        lines.append(f"| {x['t_s']} | {x['lag_total']} | {x['tweets_per_s']} | {x['reads_per_s']} | "
                     f"{x['reads_not_sent']} | {x['read_p50_ms']}/{x['read_p99_ms']} | {errors or ''} | "
                     f"{x['rss_mb']['worker']} | {x['rss_mb']['post_service']} | {x['rss_mb']['query_service']} | "
                     f"{x['machine_busy']} |")
    return "\n".join(lines) + "\n"
