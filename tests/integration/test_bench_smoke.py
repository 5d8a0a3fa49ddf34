"""Smoke test of the benchmark: ``python -m bench.run --scale small`` end to end.

Runs the whole benchmark at its small scale (about two minutes) as a subprocess,
into a temporary folder and without touching ``bench/results/latest.*``; checks
that every section of the JSON is there with positive numbers, and that the run's
namespace (topics, keyspace, Redis keys, PostgreSQL schema) is gone afterwards.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from ops.schema import cassandra_cluster
from settings import Settings

REPO = Path(__file__).resolve().parents[2]
LATEST = REPO / "bench" / "results" / "latest.json"


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


async def test_small_benchmark_reports_every_section(tmp_path: Path, services: Settings) -> None:
    latest_before = LATEST.stat().st_mtime_ns if LATEST.exists() else None
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--scale", "small", "--seed", "3", "--out-dir", str(tmp_path),
         "--no-latest"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    runs = sorted(tmp_path.glob("run-*.json"))
    assert len(runs) == 1 and runs[0].with_suffix(".md").exists()
    assert not (tmp_path / "latest.json").exists()
    assert (LATEST.stat().st_mtime_ns if LATEST.exists() else None) == latest_before
    r = json.loads(runs[0].read_text())

    for section in ("meta", "dataset", "ceilings", "graph_load", "fanout_throughput", "write_savings", "fanout_lag",
                    "reads_inprocess", "profile", "cpu_per_1000_deliveries", "pg_pull_baseline", "write_latency",
                    "reads_http", "targets", "cleanup"):
        assert section in r, section
        assert not (isinstance(r[section], dict) and ("error" in r[section] or "skipped" in r[section])), r[section]

    m = r["meta"]["machine"]
    assert positive(m["nproc"]) and positive(m["memory_gb"]) and positive(r["meta"]["duration_s"])
    assert r["dataset"]["graph"]["users"] > 0 and r["dataset"]["graph"]["follow_edges"] > 0

    c = r["ceilings"]
    for value in (c["redis"]["zadd_per_s"], c["redis"]["zrevrange_0_49_per_s"], c["redis"]["lua_push_entries_per_s"],
                  c["cassandra"]["inserts_per_s"], c["cassandra"]["batched_inserts_per_s"],
                  c["kafka"]["consume_msgs_per_s"]):
        assert positive(value)
    assert positive(r["graph_load"]["follows_per_s"])

    f = r["fanout_throughput"]
    assert positive(f["deliveries_per_s"]) and positive(f["wall_s_first_publish_to_zero_lag"])
    # Measured in the stores, and exactly what the graph says: no delivery lost, none to inactive users.
    assert f["deliveries_counted_in_cassandra"] == f["deliveries_expected_from_graph"] > 0
    assert f["rows_written_to_inactive_sample"] == 0
    assert positive({c["command"]: c for c in r["cpu_per_1000_deliveries"]["redis_commands"]}["zadd"]["calls"])

    s = r["write_savings"]
    assert 0 < s["saved_by_skipping_inactive"] < 1 and s["rows_written"] < s["push_without_activity_rule"]

    runs = r["fanout_lag"]["runs"]
    assert len(runs) >= 2
    for run in runs:
        assert positive(run["tweet_rate_per_s"]), run["load"]
        assert positive(run["all_pushed_authors_from_kafka_ack_ms"]["count"]), run["load"]
        assert positive(run["all_pushed_authors_from_kafka_ack_ms"]["p99"]), run["load"]
        for cls, v in run["by_author_size"].items():
            assert v["not_seen_within_60s"] == 0, (run["load"], cls)
        # the servers are this checkout's: the node's log is read (flushes and compactions, if any)
        assert set(run["cassandra_background"]) == {"flushes", "compactions", "compaction_s"}, run["load"]
        assert sum(1 for _ in run["max_lag_ms_by_send_second"]) > 0, run["load"]
        assert positive(run["cassandra_threads_cpu_s"].get("request stages")), run["load"]
        pushes = {c["command"]: c for c in run["redis_commands"]}  # stage 2's pushes, the probes
        assert positive(pushes["zadd"]["calls"]) and positive(pushes["zscore"]["calls"]), run["redis_commands"]

    reads = r["reads_inprocess"]
    assert positive(reads["read_rate_per_s"]) and positive(reads["tweet_rate_per_s"])
    assert set(reads["scenarios"]) >= {"cache_hit", "cache_miss"}
    for name, sc in reads["scenarios"].items():
        assert positive(sc["latency"]["count"]) and positive(sc["latency"]["p99"]), name
    assert reads["scenarios"]["cache_miss"]["sources"].get("store", 0) > 0

    http = r["reads_http"]["scenarios"]
    assert {s["scenario"] for s in http.values()} >= {"cache_hit", "cache_miss", "hybrid_10"}
    for name, sc in http.items():
        assert positive(sc["requests_per_s"]) and positive(sc["latency"]["p99"]), name
    # wrk (bench/wrk.py) ran the hit and the hybrid reads again: every response a 2xx, no socket error.
    by_wrk = {s["scenario"]: s for s in http.values() if s["client"] == "wrk"}
    assert set(by_wrk) >= {"cache_hit", "hybrid_10"}
    for sc in by_wrk.values():
        assert not sc["problems"] and sc["ok"] > 0 and positive(sc["client_cpu_ms_per_request"]), sc

    w = r["write_latency"]
    assert w["ok"] == w["requests"] and positive(w["requests_per_s"]) and positive(w["latency"]["p99"])

    pg = r["pg_pull_baseline"]
    assert positive(pg["tweets_rows"]) and positive(pg["follows_rows"])
    assert {"join/hit", "lateral/hit", "join/hybrid", "lateral/hybrid"} <= set(pg["queries"])
    for name, q in pg["queries"].items():
        assert positive(q["latency"]["p99"]) and positive(q["queries_per_s"]), name
    for name, q in pg["ours_in_process_same_conditions"].items():
        assert positive(q["latency"]["p99"]), name

    cpu = r["cpu_per_1000_deliveries"]["cpu_s_per_1000_deliveries"]
    # the worker's processes: one per stage in the benchmark's layout (bench.context.BENCH_WORKER_LAYOUT)
    workers = {"split": ["worker (fanout)", "worker (deliver)"], "one": ["worker"]}[r["meta"]["worker_layout"]]
    assert all(positive(cpu[w]) for w in workers) and positive(cpu["cassandra"])

    p = r["profile"]
    # The small run profiles a 4 s window: whether application frames land in it
    # depends on timing, so only the profile's presence is checked here.
    assert positive(p["samples"]) and p["by_task_inclusive"]
    assert isinstance(p["top_application_functions_inclusive"], list)

    assert r["targets"] and all(t["status"] in {"met", "missed", "n/a"} for t in r["targets"])
    assert any(t["status"] != "n/a" for t in r["targets"])

    # The namespace is gone.
    tag = r["meta"]["tag"]
    assert not any(k.endswith("_error") for k in r["cleanup"]), r["cleanup"]
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        assert not [t for t in await admin.list_topics() if t.endswith(f"-{tag}") or t.startswith(f"bench-{tag}-")]
    finally:
        await admin.close()
    redis = Redis.from_url(services.redis_url)
    try:
        assert not [k async for k in redis.scan_iter(match=f"bench:{tag}:*", count=1000)]
    finally:
        await redis.aclose()
    cluster = cassandra_cluster(services)
    try:
        names = {row.keyspace_name for row in cluster.connect().execute("SELECT keyspace_name FROM system_schema.keyspaces")}
        assert f"bench_{tag}" not in names
    finally:
        cluster.shutdown()
    import psycopg

    with psycopg.connect(services.postgres_dsn) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (f"bench_{tag}",)).fetchone() is None


def test_many_followers_benchmark_at_a_small_size(tmp_path: Path, services: Settings) -> None:
    """``bench.million_followers`` end to end at 12,000 followers (over the 10,000 threshold):
    the star becomes a celebrity, its later tweet is not pushed, sampled timelines match."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.million_followers", "--followers", "12000", "--sample", "10",
         "--partitions", "4", "--out-dir", str(tmp_path), "--timeout", "400"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    (report_file,) = tmp_path.glob("million-followers-*.json")
    report = json.loads(report_file.read_text())
    checks = report["checks"]
    assert report["ok"] and checks["expected_celebrity"] and checks["star_status"]["celebrity"]
    assert checks["star_status"]["followers"] == 12000 - 10
    assert checks["t1_rows_in_sampled_user_timelines"] == 0 and checks["timelines_differing_from_reference"] == {}
    assert [c["follows"] for c in report["checkpoints"]] == [1200, 12000]
    assert all(c["changelog_bytes_per_follow"] > 0 for c in report["checkpoints"])
    assert not [k for k in report["cleanup"] if k.endswith("_error")], report["cleanup"]
