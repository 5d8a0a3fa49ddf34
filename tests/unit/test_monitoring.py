"""ops/monitoring: the alert rules and the dashboard only use metrics the code exports,
with label values the code produces; the dashboard JSON is the generator's output."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

import agents.deliver  # noqa: F401 - the worker's agents (autodiscovered by a worker) and their metrics
import agents.fanout  # noqa: F401
import agents.projection  # noqa: F401
import faust_app  # noqa: F401 - installs the worker's metrics (agents/metrics.py, faust_*)
from ops.monitoring import dashboard, scrape
from post import service as post_service
from post.metrics import Metrics
from query import service as query_service
from query.metrics import QueryMetrics

MONITORING = Path(dashboard.__file__).resolve().parent
REPO = MONITORING.parent.parent
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile", "by",
                "without", "on", "ignoring", "and", "or", "unless", "bool", "le", "humanize"}


def exported(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


@pytest.fixture(scope="module")
def metric_names() -> set[str]:
    servers = {name for names in scrape.SERVER_METRICS.values() for name in names}
    return exported(REGISTRY) | exported(Metrics().registry) | exported(QueryMetrics().registry) | {"up"} | servers


def metrics_in(expr: str) -> set[str]:
    bare = re.sub(r'"[^"]*"', "", expr)  # label values
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)  # matchers, ranges
    bare = re.sub(r"\b(by|without)\s*\([^)]*\)", "", bare)
    names = set()
    for match in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", bare):
        rest = bare[match.end():].lstrip()
        if rest.startswith("(") or match.group() in PROMQL_WORDS:
            continue  # a function
        names.add(match.group())
    return names


def label_values(expr: str) -> set[tuple[str, str]]:
    return set(re.findall(r'(\w+)=~?"([^"]*)"', expr))


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def all_exprs() -> list[str]:
    return dashboard.all_exprs() + [rule["expr"] for rule in alert_rules()]


def source_text() -> str:
    files = [f for room in ("agents", "api", "post", "query", "sinks", "schemas") for f in REPO.glob(f"{room}/*.py")]
    return "\n".join(f.read_text() for f in files if f.exists())


def test_alert_rules_are_well_formed() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {"FanoutLagCritical", "ConsumerLagCritical", "CacheHitRateLow",
                                           "CacheHitRateCritical", "ReadLatencyHigh"}, "the design's alerts"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_every_metric_in_rules_and_dashboard_is_exported(metric_names: set[str]) -> None:
    used = set().union(*(metrics_in(e) for e in all_exprs()))
    assert {"timeline_fanout_lag_seconds_bucket", "timeline_consumer_lag_messages",
            "timeline_cache_lookups_total", "query_http_request_seconds_bucket"} <= used
    assert used - metric_names == set()


def test_label_values_are_ones_the_code_produces() -> None:
    routes = {r.path for r in query_service.router.routes} | {r.path for r in post_service.router.routes}
    code = source_text()
    for expr in all_exprs():
        for label, value in label_values(expr):
            if label == "route":
                assert value in routes, value
            elif label in {"what", "outcome", "plan", "cache", "result", "type", "timeline", "stage"}:
                for alternative in value.split("|"):
                    assert f'"{alternative}"' in code, f"{label}={alternative!r} is not produced anywhere"


def test_metric_extraction_sees_names_not_functions() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, what) (rate(timeline_sink_seconds_bucket{what="x"}[5m]))) > 1'
    assert metrics_in(expr) == {"timeline_sink_seconds_bucket"}
    assert metrics_in("max(faust_total_rebalances) + up") == {"faust_total_rebalances", "up"}


def test_dashboard_json_is_the_generators_output() -> None:
    assert (MONITORING / "grafana-dashboard.json").read_text() == dashboard.render(), (
        "regenerate it: python -m ops.monitoring.dashboard"
    )
