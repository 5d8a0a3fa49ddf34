"""docker-compose.yml wires the same servers and processes, with the settings the code reads."""
from __future__ import annotations

from pathlib import Path

import yaml

from settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# What every process needs to reach the servers and apply the design's policies.
REQUIRED_ENV = {
    "TL_KAFKA_BOOTSTRAP", "TL_CASSANDRA_HOSTS", "TL_CASSANDRA_PORT", "TL_CASSANDRA_KEYSPACE",
    "TL_REDIS_URL", "TL_POSTGRES_DSN", "TL_TOPIC_PARTITIONS", "TL_CELEBRITY_THRESHOLD",
    "TL_INACTIVE_AFTER_MS", "TL_TIMELINE_CAP", "TL_TIMELINE_TTL_S",
}
WORKERS = ("worker-fanout", "worker-deliver")  # the split layout: a process per stage
APPS = ("setup", *WORKERS, "post-service", "query-service")


def test_the_four_servers_at_the_versions_the_project_runs() -> None:
    assert SERVICES["kafka"]["image"] == "apache/kafka:3.9.2"
    assert SERVICES["cassandra"]["image"].startswith("cassandra:5.0")
    assert SERVICES["redis"]["image"].startswith("redis:")
    assert SERVICES["postgres"]["image"] == "postgres:15"


def test_cassandra_syncs_its_commit_log_as_often_as_the_local_node() -> None:
    """The worker's acks wait for the commit log (sinks/cassandra_sync.py): compose's node gets the
    local node's period, then starts through the image's entrypoint."""
    script = SERVICES["cassandra"]["command"][-1]
    period = Settings().cassandra_commitlog_period_ms
    assert f"s/^commitlog_sync_period:.*/commitlog_sync_period: {period}ms/" in script
    assert "/etc/cassandra/cassandra.yaml" in script
    assert script.endswith("exec docker-entrypoint.sh cassandra -f")


def test_brokers_never_create_topics_on_their_own() -> None:
    """Compose's broker and the one localenv.kafka_server writes a config for: a topic exists because
    setup (ops.schema) or the worker (Faust's changelogs) created it with its partitions."""
    from localenv.kafka_server import Kafka, parse_properties

    assert SERVICES["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert parse_properties(Kafka(Settings())._server_properties())["auto.create.topics.enable"] == "false"


def test_every_app_gets_every_required_setting() -> None:
    for name in APPS:
        env = SERVICES[name]["environment"]
        assert REQUIRED_ENV <= set(env), f"{name} lacks {sorted(REQUIRED_ENV - set(env))}"


def test_every_variable_in_the_file_is_one_the_code_reads() -> None:
    known = set(Settings.env_vars().values())
    for name in APPS:
        unknown = set(SERVICES[name]["environment"]) - known
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


def test_the_worker_runs_a_process_per_stage_each_with_its_own_tables() -> None:
    roles = {SERVICES[w]["environment"]["TL_WORKER_ROLE"]: w for w in WORKERS}
    assert set(roles) == {"fanout", "deliver"}
    for w in WORKERS:
        env = {k: str(v) for k, v in SERVICES[w]["environment"].items()}
        assert Settings.from_env(env).worker_layout == "split"
    assert len({SERVICES[w]["volumes"][0] for w in WORKERS}) == 2, "each process keeps its own RocksDB"


def test_apps_point_at_the_compose_servers() -> None:
    env = SERVICES["worker-deliver"]["environment"]
    assert env["TL_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["TL_CASSANDRA_HOSTS"] == "cassandra"
    assert env["TL_REDIS_URL"].startswith("redis://redis:")
    assert "@postgres:5432/" in env["TL_POSTGRES_DSN"]
    # the environment parses into Settings as-is
    Settings.from_env({k: str(v) for k, v in env.items()})


def test_processes_run_the_real_entry_points() -> None:
    for w in WORKERS:
        assert SERVICES[w]["command"][:5] == ["python", "-m", "faust", "-A", "faust_app"]
    assert "post.service" in SERVICES["post-service"]["command"]
    assert "query.service" in SERVICES["query-service"]["command"]


def test_prometheus_scrapes_every_process_where_it_serves_metrics() -> None:
    prom = yaml.safe_load((ROOT / "ops" / "monitoring" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prom["scrape_configs"]}
    workers = next(job["static_configs"][0]["targets"] for job in prom["scrape_configs"]
                   if job["job_name"] == "timeline-worker")
    assert workers == [f"{w}:{SERVICES[w]['environment']['TL_FAUST_WEB_PORT']}" for w in WORKERS]
    for w in WORKERS:
        assert "--web-bind" in SERVICES[w]["command"], "the worker's web server must not be loopback-only"
    for job, service in (("timeline-post", "post-service"), ("timeline-query", "query-service")):
        command = SERVICES[service]["command"]
        assert targets[job] == f"{service}:{command[command.index('--port') + 1]}"
        assert command[command.index("--host") + 1] == "0.0.0.0"
    mounts = [v.split(":")[0] for v in SERVICES["prometheus"]["volumes"] + SERVICES["grafana"]["volumes"]]
    for mount in mounts:
        assert (ROOT / mount).exists(), mount
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
