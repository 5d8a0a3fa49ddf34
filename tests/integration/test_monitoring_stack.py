"""``./dev up``'s code (``localenv.stack.Stack``) on private ports, a private state folder and
a namespace of its own, against the shared servers (reused, never stopped): the worker,
the Post and query services, the exporters and Prometheus come up, Prometheus scrapes every
one of them (its HTTP API says ``up``), the servers' health metrics are there, the alert
rules are loaded; ``down`` stops what the stack started and leaves the shared servers up."""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from localenv.jmx_exporter import agent_answers
from localenv.stack import Stack, StackPorts
from ops.monitoring import scrape
from settings import Settings
from tests.integration.pipeline_harness import drop, isolated_settings


@pytest.fixture(scope="module", params=["one", "split"])
def stack(services: Settings, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The stack in each worker layout (policies/worker_layout.py): one worker process, or one per role."""
    state = tmp_path_factory.mktemp("stack")
    settings = isolated_settings(state, worker_layout=request.param)
    stack = Stack(settings, state=state, ports=StackPorts.free())
    try:
        stack.up(seed=False, echo=lambda line: None)
        yield stack
    finally:
        stack.down(echo=lambda line: None)
        drop(settings)


def agent_jobs(stack: Stack) -> set[str]:
    """Kafka/Cassandra jobs whose server runs the JMX exporter agent (shared servers started
    by an older checkout run without it until restarted: ``./dev up`` says so)."""
    return {name for name in (scrape.KAFKA, scrape.CASSANDRA)
            if agent_answers(stack.server(name).host, stack.server(name).agent_port)}


def wait_targets_up(stack: Stack, jobs: set[str], timeout: float = 30.0) -> dict[str, list[str]]:
    """Until every target of these jobs is up (a job may have several: the split layout's
    two worker processes); the health of each job's targets."""
    health: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = {}
        for t in stack.prometheus.active_targets():
            health.setdefault(t["job"], []).append(t["health"])
        if all(health.get(job) and all(h == "up" for h in health[job]) for job in jobs):
            return health
        time.sleep(1.0)
    errors = {t["job"]: t["lastError"] for t in stack.prometheus.active_targets() if t["job"] in jobs}
    raise AssertionError(f"targets not up after {timeout:.0f}s: {health}; errors {errors}")


def test_every_process_is_scraped(stack: Stack) -> None:
    rows = stack.status()
    assert [r.name for r in rows if not r.up] == [], [r.line() for r in rows]
    assert set(stack.scrape_targets()) == set(scrape.JOBS)
    own = set(scrape.JOBS) - {scrape.KAFKA, scrape.CASSANDRA}
    wait_targets_up(stack, own | agent_jobs(stack))
    up = {r["metric"]["job"] for r in stack.prometheus.query("up == 1")}
    assert own <= up
    assert stack.prometheus.query('timeline_consumer_lag_messages') or stack.prometheus.query(
        'faust_total_rebalances'), "the worker's own metrics are not scraped"
    roles = {"one": ["worker"], "split": ["worker-fanout", "worker-deliver"]}[stack.settings.worker_layout]
    assert [w.name for w in stack.workers] == roles
    workers = [t for t in stack.prometheus.active_targets() if t["job"] == scrape.WORKER]
    assert len(workers) == len(roles) and all(t["health"] == "up" for t in workers), workers


def test_server_health_metrics_are_there(stack: Stack) -> None:
    jobs = {scrape.REDIS, scrape.POSTGRES} | agent_jobs(stack)
    wait_targets_up(stack, jobs)
    missing = [f"{job}: {name}" for job in sorted(jobs) for name in scrape.SERVER_METRICS[job]
               if not stack.prometheus.query(f'{name}{{job="{job}"}}')]
    assert missing == []
    (redis_up,) = stack.prometheus.query('redis_up{job="redis"}')
    assert redis_up["value"][1] == "1"
    assert float(stack.prometheus.query('sum(pg_stat_activity_count{job="postgres"})')[0]["value"][1]) >= 1


def test_kafka_and_cassandra_metrics_from_the_jmx_agent(stack: Stack) -> None:
    missing = {scrape.KAFKA, scrape.CASSANDRA} - agent_jobs(stack)
    # Servers started by an older checkout have no agent: a failure that says what to do,
    # not a skip (a skipped check would pass without having checked anything).
    assert not missing, (f"shared {sorted(missing)} started before the JMX exporter agent was added: "
                         "./dev services down && ./dev up restarts them with it")
    wait_targets_up(stack, {scrape.KAFKA, scrape.CASSANDRA})
    (urp,) = stack.prometheus.query('kafka_server_under_replicated_partitions{job="kafka"}')
    assert urp["value"][1] == "0"
    latency = stack.prometheus.query('cassandra_client_request_latency_seconds{op="Write",quantile="0.99"}')
    assert latency and float(latency[0]["value"][1]) >= 0


def test_alert_rules_are_loaded(stack: Stack) -> None:
    groups = {g["name"]: [r["name"] for r in g["rules"]] for g in stack.prometheus.api("rules")["groups"]}
    assert {"FanoutLagCritical", "ConsumerLagCritical", "CacheHitRateCritical", "CacheHitRateLow",
            "ReadLatencyHigh", "CpuHigh"} <= {name for rules in groups.values() for name in rules}


def test_the_dashboard_page_reads_this_prometheus(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.dashboard.url}/api/v1/query?query=up", timeout=10) as resp:
        answer = json.load(resp)
    assert answer["status"] == "success" and answer["data"]["result"], answer
    with urllib.request.urlopen(f"{stack.dashboard.url}/", timeout=10) as resp:
        assert b"page.js" in resp.read()


# Last: it stops the stack (the fixture's down() then finds nothing to stop).
def test_up_again_reuses_and_down_leaves_shared_servers(stack: Stack) -> None:
    pids = {svc.name: svc.our_pid() for svc in stack.processes}
    began = time.monotonic()
    stack.up(seed=False, echo=lambda line: None)
    assert {svc.name: svc.our_pid() for svc in stack.processes} == pids
    assert time.monotonic() - began < 30
    assert stack.started_servers() == set(), "the shared servers were already running"
    stack.down(echo=lambda line: None)
    assert [svc.name for svc in stack.processes if svc.our_pid() or svc.is_up(1.0)] == []
    assert [svc.name for svc in stack.servers if not svc.is_up(5.0)] == []
