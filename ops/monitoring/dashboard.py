"""The Grafana dashboard of the design's section 12, generated from the panel list below.

    python -m ops.monitoring.dashboard        # rewrites ops/monitoring/grafana-dashboard.json

Rows follow the design: write path, fanout, read path, worker health, the servers' health. Every query uses
metrics the code exports (tests/unit/test_monitoring.py checks the names, and that the
JSON file is this module's output).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent / "grafana-dashboard.json"
HOME = 'route="/v1/users/{user_id}/timelines/home"'
TWEETS = 'route="/v1/tweets",method="POST"'


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (legend, PromQL)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""


def p99(metric: str, selector: str = "", by: str = "") -> str:
    sel = f"{{{selector}}}" if selector else ""
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket{sel}[5m])))"


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Write path", (
        Panel("Tweet creation rate", (("tweets/s", 'sum(rate(post_events_produced_total{type="tweet_posted"}[1m]))'),),
              "reqps", description="Tweets accepted by the Post service (baseline 2,300/s; alert above 20K/s)."),
        Panel("POST /v1/tweets latency (validation, id, Kafka publish)", (
            ("p50", f"histogram_quantile(0.5, sum by (le) (rate(post_http_request_seconds_bucket{{{TWEETS}}}[5m])))"),
            ("p99", p99("post_http_request_seconds", TWEETS)),
        ), "s"),
        Panel("Events produced by type", (("{{type}}", "sum by (type) (rate(post_events_produced_total[1m]))"),), "ops"),
        Panel("PostgreSQL projection write latency p99", (("p99", p99("timeline_sink_seconds", 'what="postgres projection"')),), "s"),
    )),
    ("Fanout", (
        Panel("Fanout lag", (
            ("p50", "histogram_quantile(0.5, sum by (le) (rate(timeline_fanout_lag_seconds_bucket[5m])))"),
            ("p99", p99("timeline_fanout_lag_seconds")),
        ), "s", description="Tweet created_at to its timeline rows written (target p99 < 10 s; alert > 60 s)."),
        Panel("Kafka consumer lag", (("{{topic}}", "sum by (topic) (timeline_consumer_lag_messages)"),), "short",
              description="Messages behind the log end, per source topic (alert > 10K)."),
        Panel("Timeline rows by outcome", (("{{outcome}}", "sum by (outcome) (rate(timeline_deliveries_total[1m]))"),), "ops",
              description="pushed / backfilled / rebuilt / removed are Cassandra and Redis writes; "
                          "skipped_inactive are the writes saved by not pushing to inactive followers."),
        Panel("Write savings from inactive followers", ((
            "saved",
            'sum(rate(timeline_deliveries_total{outcome="skipped_inactive"}[5m]))'
            ' / (sum(rate(timeline_deliveries_total{outcome=~"pushed|skipped_inactive"}[5m])))',
        ),), "percentunit", "stat"),
        Panel("Tweets pushed vs pulled (celebrities)", (("{{plan}}", "sum by (plan) (rate(timeline_fanout_tweets_total[1m]))"),), "ops"),
        Panel("Store write latency p99", (("{{what}}", p99("timeline_sink_seconds", by="what")),), "s"),
    )),
    ("Read path", (
        Panel("Home timeline request rate", (("{{status}}", f"sum by (status) (rate(query_http_requests_total{{{HOME}}}[1m]))"),), "reqps"),
        Panel("Cache hit rate", ((
            "{{cache}}",
            'sum by (cache) (rate(timeline_cache_lookups_total{result="hit"}[5m]))'
            " / sum by (cache) (rate(timeline_cache_lookups_total[5m]))",
        ),), "percentunit", description="timeline: Redis home timelines (target > 90%); tweet: bodies; "
                                        "following: cached following lists; handle: author handles."),
        Panel("Home timeline latency", (
            ("p50", f"histogram_quantile(0.5, sum by (le) (rate(query_http_request_seconds_bucket{{{HOME}}}[5m])))"),
            ("p99", p99("query_http_request_seconds", HOME)),
            ("p999", f"histogram_quantile(0.999, sum by (le) (rate(query_http_request_seconds_bucket{{{HOME}}}[5m])))"),
        ), "s", description="Targets: 10 ms on a cache hit, 50 ms on a miss."),
        Panel("Read latency p99 by source", (("{{source}}", p99("timeline_read_seconds", 'timeline="home"', by="source")),), "s",
              description="cache: Redis; store: Cassandra; rebuilt: merged on the spot for a returning user."),
        Panel("Reads' store queries and Redis round trips per second", (
            ("cassandra", "sum(rate(timeline_store_queries_total[1m]))"),
            ("redis", "sum(rate(timeline_redis_round_trips_total[1m]))"),
        ), "ops"),
    )),
    ("Worker health", (
        Panel("Batch time p99 by stage", (("{{stage}}", p99("timeline_batch_seconds", by="stage")),), "s"),
        # "or vector(0)": these counters have no series until their first increment; 0 is the truth.
        Panel("Store retries", (("{{what}}", "sum by (what) (increase(timeline_sink_retries_total[5m])) or vector(0)"),),
              "short"),
        Panel("Dead letters", (("{{topic}} {{stage}}",
                                "sum by (topic, stage) (increase(timeline_dead_letters_total[15m])) or vector(0)"),), "short"),
        Panel("Rebalances in progress", (("rebalancing", "max(faust_total_rebalances)"),), "short", "stat"),
        Panel("Process CPU", (("{{job}} {{instance}}", "rate(process_cpu_seconds_total[1m])"),), "percentunit"),
        Panel("Process memory", (("{{job}} {{instance}}", "process_resident_memory_bytes"),), "bytes"),
    )),
    # From the servers' own exporters (ops/monitoring/scrape.SERVER_METRICS).
    ("System health (servers)", (
        Panel("Redis memory", (("used", "sum(redis_memory_used_bytes)"),), "bytes"),
        Panel("Redis evictions and clients", (("evicted keys/s", "sum(rate(redis_evicted_keys_total[1m]))"),
                                              ("connected clients", "sum(redis_connected_clients)")), "short"),
        Panel("Cassandra request latency p99 (coordinator)", (
            ("{{op}}", 'max by (op) (cassandra_client_request_latency_seconds{quantile="0.99"})'),), "s"),
        Panel("Cassandra pending compactions", (("pending", "sum(cassandra_compaction_pending_tasks)"),), "short"),
        Panel("PostgreSQL connections", (("in use", "sum(pg_stat_activity_count)"),
                                         ("max", "max(pg_settings_max_connections)")), "short"),
        Panel("Kafka under-replicated partitions", (
            ("under-replicated", "sum(kafka_server_under_replicated_partitions)"),), "short", "stat"),
    )),
)


def all_exprs() -> list[str]:
    return [expr for _, panels in ROWS for panel in panels for _, expr in panel.exprs]


def build() -> dict:
    panels: list[dict] = []
    next_id = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        for i, panel in enumerate(row_panels):
            panels.append({
                "id": next_id,
                "type": panel.kind,
                "title": panel.title,
                "description": panel.description,
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "prometheus"}}
                    for j, (legend, expr) in enumerate(panel.exprs)
                ],
            })
            next_id += 1
        y += ((len(row_panels) + 2) // 3) * 8
    return {
        "uid": "home-timeline",
        "title": "Home timeline service",
        "description": "The design's monitoring dashboard (section 12): write path, fanout, read path, worker health, the servers' health.",
        "tags": ["timeline"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
