"""The Faust application: the app object, its settings and its ``GET /metrics``.

Agents (``agents/``), tables (``tables/``) and topics (``streams/``) import
``app`` from here; a worker finds them by autodiscovery:

    python -m faust -A faust_app worker -l info
"""
from __future__ import annotations

from faust.auth import SASLCredentials

from agents import metrics, shutdown
from logs import dict_config
from policies import worker_layout
from policies.fetch_gather import FetchGather
from streams import fetch_gather
from streams.faust_handover import HandoverSafeApp, SeekThenResumeTableManager
from schemas import source_topics
from settings import get_settings

settings = get_settings()
# The stages this process runs (TL_WORKER_LAYOUT / TL_WORKER_ROLE; policies/worker_layout.py):
# each role is an app of its own, its id the role's consumer group.
ROLE = worker_layout.worker_role(settings.worker_layout, settings.worker_role)


def runs(stage: str) -> bool:
    """Whether this process runs ``stage`` ("fanout", "projection" or "deliver")."""
    return worker_layout.runs(ROLE, stage)


def broker_credentials(kafka_kwargs: dict) -> SASLCredentials | None:
    """Faust's form of ``Settings.kafka_kwargs()``: the worker authenticates as the other
    clients do (None: PLAINTEXT)."""
    if kafka_kwargs["security_protocol"] == "PLAINTEXT":
        return None
    return SASLCredentials(username=kafka_kwargs["sasl_plain_username"],
                           password=kafka_kwargs["sasl_plain_password"],
                           mechanism=kafka_kwargs["sasl_mechanism"])


# HandoverSafeApp and SeekThenResumeTableManager are faust.App and its table
# manager with the partition hand-over after a rebalance fixed (see
# streams/faust_handover.py): without them a worker that takes partitions over can
# strand or skip messages.
app = HandoverSafeApp(
    settings.worker_group,
    broker=f"kafka://{settings.kafka_bootstrap}",
    broker_credentials=broker_credentials(settings.kafka_kwargs()),
    store=settings.faust_store,
    datadir=settings.faust_datadir,
    autodiscover=["streams", "tables", "agents"],
    origin="faust_app",
    # At-least-once: every sink write is idempotent, so replays are harmless.
    processing_guarantee="at_least_once",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication,
    producer_acks=-1,
    # Batch the changelog and delivery sends: with faust's default linger of 0 each small
    # message went out in a produce request of its own (the worker's main thread spent more
    # time in socket writes than in the agents). 5 ms is Kafka 4.0's own client default.
    producer_linger=0.005,
    producer_max_batch_size=256 * 1024,
    consumer_auto_offset_reset="earliest",
    broker_commit_every=1000,
    broker_commit_interval=1.0,
    broker_session_timeout=settings.broker_session_timeout_s,
    broker_heartbeat_interval=min(1.0, settings.broker_session_timeout_s / 3),
    # A named worker is findable in the group (ops/supervise.py removes a dead one's member).
    **({"broker_client_id": f"{settings.worker_group}-{settings.worker_name}"} if settings.worker_name else {}),
    consumer_group_instance_id=settings.worker_name if settings.worker_static_membership else None,
    stream_buffer_maxsize=8192,
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    web_port=settings.faust_web_port,
    web_enabled=True,
    table_standby_replicas=0,
    TableManager=SeekThenResumeTableManager,
    # faust's worker without its terminal spinner, which put the root logger at DEBUG at
    # -l warn (streams/faust_worker.py).
    Worker="streams.faust_worker:Worker",
    # JSON lines, as the HTTP services log (logs.py), at the worker's -l level.
    logging_config=dict_config("worker"),
)

# GET /metrics on the worker's web server: Faust's sensor metrics and the pipeline's
# (agents/metrics.py); ops/monitoring/ has the dashboard and alert rules.
metrics.install(app, [*source_topics(settings), settings.topic_deliveries])

# SIGTERM/SIGINT: stopped within TL_SHUTDOWN_GRACE_S, even with a store down (agents/shutdown.py).
shutdown.install(app, settings.shutdown_grace_s)

# Stage 1's consumer fetches wait to gather records while many arrive (streams/fetch_gather.py).
if runs("fanout"):
    fetch_gather.install(app, FetchGather(settings.fetch_gather_ms, settings.fetch_gather_above))
