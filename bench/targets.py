"""The benchmark's targets, held against a run's report (its ``targets`` section)."""
from __future__ import annotations

from typing import Any

# Issue 13 (fresh under load) and issue 14 (reads at the floor).
TARGETS = {
    "fanout_deliveries_per_s": 25_000,
    "fanout_share_of_slower_store_ceiling": 0.8,
    "pipeline_cpu_s_per_1000_deliveries": 0.05,
    "idle_lag_p50_ms": 30.0,
    "idle_lag_p99_ms": 100.0,
    # p99 lag goal (ms) per share of the burst capacity; authors below 10,000 followers
    "lag_p99_ms_at_share": {0.5: 1000.0, 0.8: 2000.0},
    "cache_hit_p50_ms": 1.0,
    "cache_hit_p50_ms_at_concurrency_8": 5.0,
    "cache_hit_p99_ms": 2.0,
    "cache_miss_p99_ms": 10.0,
    "hybrid10_minus_hit_p99_ms": 1.0,
    "post_p99_ms_at_concurrency": {8: 20.0, 32: 50.0},
    "pg_pull_p99_over_ours": 50.0,
}


def get(d: Any, *path: str) -> Any:
    """``d[path[0]][path[1]]...``, or None where a step is missing."""
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def http_quantile(report: dict, scenario: str, q: str = "p99", client: str | None = None) -> tuple[float | None, Any]:
    """Quantile ``q`` of an HTTP scenario at its lowest concurrency (pure latency), and that
    concurrency; measured by ``client`` (``python``, ``wrk``) when given."""
    best = None
    for s in (get(report, "reads_http", "scenarios") or {}).values():
        if client is not None and s.get("client", "python") != client:
            continue
        if s.get("scenario") == scenario and s.get("latency", {}).get(q) is not None:
            if best is None or (s.get("concurrency") or 0) < (best.get("concurrency") or 0):
                best = s
    return (best["latency"][q], best.get("concurrency")) if best else (None, None)


def evaluate_targets(r: dict) -> list[dict]:
    """One row per target: value, goal, ``met`` / ``missed`` / ``n/a`` and how the value was found."""
    out = []
    share_goal = TARGETS["fanout_share_of_slower_store_ceiling"]
    ratio_goal = TARGETS["pg_pull_p99_over_ours"]

    def add(name: str, value: Any, target: Any, met: bool | None, detail: str) -> None:
        out.append({"target": name, "value": value, "goal": target,
                    "status": "n/a" if met is None else ("met" if met else "missed"), "detail": detail})

    rate = get(r, "fanout_throughput", "deliveries_per_s")
    goal = TARGETS["fanout_deliveries_per_s"]
    add("fanout deliveries/s", rate, f">= {goal:,}", None if rate is None else rate >= goal,
        "" if rate is None else f"{rate / goal:.0%} of the target ({'+' if rate >= goal else ''}{rate - goal:,.0f}/s)")
    redis_ceiling = get(r, "ceilings", "redis", "zadd_per_s")
    # The pipeline writes Cassandra in UNLOGGED batches: hold it against batched inserts of the
    # same rows (the one-by-one figure, the first definition, is in section 6 too).
    cass_ceiling = get(r, "ceilings", "cassandra", "batched_inserts_per_s") or get(
        r, "ceilings", "cassandra", "inserts_per_s")
    if rate is not None and redis_ceiling and cass_ceiling:
        slower = min(redis_ceiling, cass_ceiling)
        share = rate / slower
        which = "Cassandra batched inserts" if cass_ceiling <= redis_ceiling else "Redis ZADD"
        add("fanout vs slower raw store ceiling", round(share, 3), f">= {share_goal:g}", share >= share_goal,
            f"{rate:,.0f} / {slower:,.0f} ({which}/s)")
    else:
        add("fanout vs slower raw store ceiling", None, f">= {share_goal:g}", None, "missing figure")
    cpu = get(r, "cpu_per_1000_deliveries", "pipeline_cpu_s_per_1000_deliveries")
    goal = TARGETS["pipeline_cpu_s_per_1000_deliveries"]
    add("pipeline CPU-s per 1,000 deliveries (burst)", cpu, f"<= {goal:g}", None if cpu is None else cpu <= goal,
        "worker + Kafka + Cassandra + Redis + PostgreSQL")
    lag_rows = 0
    for run in get(r, "fanout_lag", "runs") or []:
        share = run.get("share")
        idle = "capacity" not in run.get("load", "")
        lag_goal = TARGETS["lag_p99_ms_at_share"].get(share) if share is not None else None
        for cls, v in run["by_author_size"].items():
            lag = v.get("from_kafka_ack_ms") or {}
            p50, p99 = lag.get("p50"), lag.get("p99")
            if p99 is None or cls == "celebrity":
                continue
            detail = f"n={lag.get('count')}, p50 {p50} ms, max {lag.get('max')} ms"
            if idle:
                lag_rows += 1
                for what, value, goal_key in (("p50", p50, "idle_lag_p50_ms"), ("p99", p99, "idle_lag_p99_ms")):
                    add(f"fanout lag {what} at {run['load']}, {cls}", value, f"< {TARGETS[goal_key]:g} ms",
                        value < TARGETS[goal_key], detail)
            elif lag_goal is not None:
                lag_rows += 1
                add(f"fanout lag p99 at {run['load']} ({run['tweet_rate_per_s']} tweets/s), {cls}", p99,
                    f"< {lag_goal:g} ms", p99 < lag_goal, detail)
            else:  # a load point without a goal: shown, not judged
                add(f"fanout lag p99 at {run['load']} ({run['tweet_rate_per_s']} tweets/s), {cls}", p99,
                    "", None, detail)
    if not lag_rows:
        add("fanout lag p99, authors < 10,000 followers", None, "see issue 13", None, "missing figure")
    # Latency as wrk (a C client) measures it when it ran: less client time inside each figure
    # (bench/wrk.py); the Python client's figure is given beside it. The miss is Python's only
    # (it deletes the cached timeline before each read).
    client = "wrk" if http_quantile(r, "cache_hit", client="wrk")[0] is not None else "python"

    def measured_by(scenario: str, q: str, used: str) -> str:
        if used == "python":
            return "Python client"
        other, _ = http_quantile(r, scenario, q, client="python")
        return f"wrk (C client); the Python client: {other} ms"

    hit, hit_c = http_quantile(r, "cache_hit", client=client)
    miss, miss_c = http_quantile(r, "cache_miss", client="python")
    hyb, hyb_c = http_quantile(r, "hybrid_10", client=client)
    for name, value, goal_key, concurrency, how in (
            ("HTTP cache-hit read p99", hit, "cache_hit_p99_ms", hit_c, measured_by("cache_hit", "p99", client)),
            ("HTTP cache-miss read p99", miss, "cache_miss_p99_ms", miss_c, "Python client")):
        add(name, value, f"< {TARGETS[goal_key]:g} ms", None if value is None else value < TARGETS[goal_key],
            f"concurrency {concurrency}, {how}")
    hit_p50, _ = http_quantile(r, "cache_hit", "p50", client=client)
    add("HTTP cache-hit read p50", hit_p50, f"< {TARGETS['cache_hit_p50_ms']:g} ms",
        None if hit_p50 is None else hit_p50 < TARGETS["cache_hit_p50_ms"],
        f"concurrency {hit_c}, {measured_by('cache_hit', 'p50', client)}")
    busy = [s for s in (get(r, "reads_http", "scenarios") or {}).values()
            if s.get("scenario") == "cache_hit" and s.get("concurrency") == 8 and get(s, "latency", "p50") is not None]
    goal = TARGETS["cache_hit_p50_ms_at_concurrency_8"]
    if busy:  # the best of the process counts measured; each is in the HTTP table
        best = min(busy, key=lambda s: s["latency"]["p50"])
        p50 = best["latency"]["p50"]
        add("HTTP cache-hit read p50 at concurrency 8", p50, f"< {goal:g} ms", p50 < goal,
            f"{best.get('server_processes', 1)} server process(es), {best.get('client', 'python')} client, "
            f"{best['requests_per_s']} reads/s, {best.get('reads_per_service_cpu_s')} reads per service "
            f"CPU-second; each measured: " + ", ".join(
                f"{s.get('server_processes', 1)}p/{s.get('client', 'python')} {s['latency']['p50']} ms"
                for s in busy))
    else:
        add("HTTP cache-hit read p50 at concurrency 8", None, f"< {goal:g} ms", None, "not measured in this run")
    for concurrency, goal in TARGETS["post_p99_ms_at_concurrency"].items():
        post = get(r, "write_latency")
        points = (post.get("points") or [post]) if post else []
        p99 = next((get(pt, "latency", "p99") for pt in points if pt.get("concurrency") == concurrency), None)
        add(f"POST /v1/tweets p99 at concurrency {concurrency}", p99, f"< {goal:g} ms",
            None if p99 is None else p99 < goal, "201 only after Kafka acks" if p99 is not None
            else "not measured at this concurrency in this run")
    hybrid_goal = TARGETS["hybrid10_minus_hit_p99_ms"]
    if hit is not None and hyb is not None:
        add("HTTP hybrid(10) p99 minus hit p99", round(hyb - hit, 2), f"<= {hybrid_goal:g} ms",
            hyb - hit <= hybrid_goal, f"{hyb} - {hit} ms at concurrency {hyb_c}, {client} client")
    else:
        add("HTTP hybrid(10) p99 minus hit p99", None, f"<= {hybrid_goal:g} ms", None, "missing figure")
    pg = get(r, "pg_pull_baseline", "queries") or {}
    rows = get(r, "pg_pull_baseline", "tweets_rows")
    for ours_name, ours, pg_key in (("HTTP cache hit", hit, "join/hit"), ("HTTP hybrid(10)", hyb, "join/hybrid")):
        pg_p99 = get(pg, pg_key, "latency", "p99")
        if ours and pg_p99:
            ratio = pg_p99 / ours
            add(f"PostgreSQL pull (join) p99 / {ours_name} p99", round(ratio, 1), f">= {ratio_goal:g}x",
                ratio >= ratio_goal,
                f"{pg_p99} ms vs {ours} ms, {rows:,} tweets rows" if rows else f"{pg_p99} ms vs {ours} ms")
        else:
            add(f"PostgreSQL pull (join) p99 / {ours_name} p99", None, f">= {ratio_goal:g}x", None, "missing figure")
    quiet = get(r, "pg_pull_baseline", "ours_in_process_same_conditions") or {}
    for pg_key, ours_key in (("join/hit", "cache_hit"), ("join/hybrid", "hybrid"), ("join/typical", "typical_hit"),
                             ("lateral/hit", "cache_hit"), ("lateral/hybrid", "hybrid"),
                             ("lateral/typical", "typical_hit")):
        pg_p99 = get(pg, pg_key, "latency", "p99")
        ours = get(quiet, ours_key, "latency", "p99")
        if ours and pg_p99:
            add(f"PostgreSQL pull ({pg_key}) p99 / our in-process {ours_key} p99, same data and conditions",
                round(pg_p99 / ours, 1), f">= {ratio_goal:g}x", pg_p99 / ours >= ratio_goal,
                f"{pg_p99} ms vs {ours} ms")
    return out
