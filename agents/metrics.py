"""Prometheus metrics of the stream worker.

Served by the worker's own web server at ``GET /metrics`` (``TL_FAUST_WEB_PORT``,
6066 by default), next to Faust's sensor metrics (``faust_*``: messages and events
in, event runtime, sends, commit latency, rebalances). The ones below are the
pipeline's; ``ops/monitoring/`` has the dashboard and alert rules built on them.

* ``timeline_fanout_lag_seconds``: from a tweet's ``created_at`` (its acceptance by the
  Post service, or the producer's clock) to its rows being written in Cassandra and
  Redis by stage 2; one observation per tweet per recipient batch. During a replay it
  measures the age of the replayed tweets, so alert on it only for a live pipeline.
* ``timeline_deliveries_total{outcome}``: timeline rows stage 2 wrote or skipped:
  ``pushed`` (a new tweet, to an active follower), ``skipped_inactive`` (a follower
  inactive past the limit: not written, rebuilt when they return), ``removed`` (a
  delete or an unfollow), ``backfilled`` (a follow, or an author leaving celebrity
  status), ``rebuilt`` (a returning user's timeline).
* ``timeline_fanout_tweets_total{plan}``: tweets stage 1 planned: ``pushed`` or
  ``pulled`` (a celebrity's tweet, merged at read time).
* ``timeline_batch_seconds{stage}`` and ``timeline_batch_events{stage}``: the time and
  size of each agent batch (``fanout``, ``deliver``, ``projection``).
* ``timeline_sink_seconds{what}`` and ``timeline_sink_retries_total{what}``: store
  operations by name, and retries while a store is unavailable.
* ``timeline_consumer_lag_messages{topic,partition}``: for the partitions this worker
  owns now, the log end minus the committed position (messages not processed yet).
* ``timeline_dead_letters_total{topic,stage}``: events sent to the dead-letter topic.
* ``timeline_errors_total{stage,kind}``: errors by kind (``transient``: retried;
  ``permanent``: the event is dead-lettered; ``systemic``: the worker stops),
  ``timeline_store_retrying{what}`` (1 while a store operation waits on a transient
  error) and ``timeline_isolated_events_total{stage}`` (events a store refused),
  from ``agents/failures.py``. ``GET /healthz`` answers 503 ``waiting_for_stores``
  while any store operation is retrying.
* ``timeline_gc_pause_seconds{generation}``: the garbage collector's pauses (every
  coroutine of the worker stops meanwhile; a full collection walks every object alive).
* ``timeline_fetch_gathering``: 1 while stage 1's Kafka fetches wait to gather records
  (``streams/fetch_gather.py``).
"""
from __future__ import annotations

import gc
import logging
import time
from contextvars import ContextVar
from typing import Any, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gc_tuning import GC_BUCKETS, GcPauses

log = logging.getLogger(__name__)

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500)

FANOUT_LAG = Histogram(
    "timeline_fanout_lag_seconds",
    "Tweet created_at to its timeline rows written in Cassandra and Redis (stage 2)",
    buckets=LAG_BUCKETS,
)
DELIVERIES = Counter(
    "timeline_deliveries_total", "Timeline rows written or skipped by stage 2, by outcome", ["outcome"]
)
FANOUT_TWEETS = Counter(
    "timeline_fanout_tweets_total", "Tweets planned by stage 1: pushed to followers or pulled at read time",
    ["plan"],
)
BATCH_SECONDS = Histogram(
    "timeline_batch_seconds", "Time to process one agent batch, writes included", ["stage"], buckets=BATCH_BUCKETS
)
BATCH_EVENTS = Histogram(
    "timeline_batch_events", "Events in one agent batch", ["stage"], buckets=SIZE_BUCKETS
)
SINK_SECONDS = Histogram(
    "timeline_sink_seconds", "Store operations of the agents, retries included", ["what"], buckets=BATCH_BUCKETS
)
SINK_RETRIES = Counter(
    "timeline_sink_retries_total", "Store operations retried because a store failed", ["what"]
)
# The commit-log gate (sinks/cassandra_sync.py, agents/take.py): with commitlog_sync periodic a
# processed batch is acked to Kafka only once Cassandra's commit log holds its writes on disk.
ACK_WAIT = Histogram(
    "timeline_ack_wait_seconds", "Processed batch to its Kafka ack: the wait for Cassandra's commit log",
    ["stage"], buckets=BATCH_BUCKETS,
)
FETCH_GATHERING = Gauge(
    "timeline_fetch_gathering", "1 while the worker's Kafka fetches wait to gather records (streams/fetch_gather.py)"
)
COMMITLOG_PROBES = Counter(
    "timeline_commitlog_probes_total", "One-row writes sent because no other write showed the commit log synced"
)
BATCHES_REDONE = Counter(
    "timeline_batches_redone_total",
    "Batches processed again because Cassandra restarted before their writes were known on disk", ["stage"],
)

OUTCOMES = ("pushed", "skipped_inactive", "removed", "backfilled", "rebuilt")
for _outcome in OUTCOMES:  # present from the start, so rate() sees the first increment
    DELIVERIES.labels(_outcome)
for _plan in ("pushed", "pulled"):
    FANOUT_TWEETS.labels(_plan)


def observe_fanout_lag(created_at_ms: Iterable[int], now_ms: int | None = None) -> None:
    now = time.time() * 1000 if now_ms is None else now_ms
    for created in created_at_ms:
        FANOUT_LAG.observe(max(0.0, (now - created) / 1000))


def count_deliveries(counts: dict[str, int]) -> None:
    for outcome, n in counts.items():
        if n:
            DELIVERIES.labels(outcome).inc(n)
    count_rows(sum(n for outcome, n in counts.items() if outcome != "skipped_inactive"))


# The rows the batch running in this task wrote so far (count_rows), for its log line.
_BATCH_ROWS: ContextVar[list[int] | None] = ContextVar("batch_rows", default=None)


def count_rows(n: int) -> None:
    """Add ``n`` rows to what the current batch wrote (timeline rows in stage 2, tweets planned
    in stage 1); outside a batch, nothing."""
    rows = _BATCH_ROWS.get()
    if rows is not None:
        rows[0] += n


class BatchTimer:
    """``with BatchTimer("deliver", len(events)):`` records a batch's size and duration, and
    logs a ``batch`` event (``logs``): stage, events, rows (when the stage counts them), ms.
    A batch whose writes go on after the block (``agents/loop.consume``'s overlap) sets
    ``deferred`` in it and calls ``finish`` when they are done: its duration runs to then
    (and tasks created in the block count their rows into it)."""

    def __init__(self, stage: str, events: int) -> None:
        self.stage = stage
        self.events = events
        self.deferred = False
        BATCH_EVENTS.labels(stage).observe(events)

    def __enter__(self) -> "BatchTimer":
        self.started = time.perf_counter()
        self.rows = [0]
        self._token = _BATCH_ROWS.set(self.rows)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        _BATCH_ROWS.reset(self._token)
        if not self.deferred or exc_type is not None:
            self.finish(exc_type is None)

    def finish(self, ok: bool) -> None:
        seconds = time.perf_counter() - self.started
        BATCH_SECONDS.labels(self.stage).observe(seconds)
        fields = {"event": "batch", "stage": self.stage, "events": self.events, "rows": self.rows[0],
                  "ms": round(seconds * 1000, 2), "ok": ok}
        log.info("%s batch: %d events, %d rows in %.1f ms", self.stage, self.events, self.rows[0],
                 seconds * 1000, extra=fields)


def consumer_lag(consumer: Any, topics: frozenset[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> messages between the committed position and the log end, for
    the partitions of ``topics`` that ``consumer`` (a Faust consumer) owns and has seen
    the end of. (Faust's committed offset is Kafka's: the next offset to read.)"""
    out: dict[tuple[str, int], int] = {}
    committed = getattr(consumer, "_committed_offset", {})
    for tp in consumer.assignment():
        if tp.topic not in topics:  # changelogs are written, not consumed, by their owner
            continue
        try:
            end = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet, or the partition was just revoked
            continue
        if end is None:
            continue
        done = committed.get(tp)
        out[(tp.topic, tp.partition)] = max(0, end - (done or 0))
    return out


class ConsumerLagCollector(Collector):
    """``timeline_consumer_lag_messages``, computed at scrape time from the live assignment
    (so partitions handed to another worker stop being reported here)."""

    def __init__(self, app: Any, topics: Iterable[str]) -> None:
        self.app = app
        self.topics = frozenset(topics)

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "timeline_consumer_lag_messages",
            "Messages between the committed position and the log end, per owned partition",
            labels=["topic", "partition"],
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """For registration: without it the registry would collect() at import time."""
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        try:
            lag = consumer_lag(self.app.consumer, self.topics)
        except Exception:  # noqa: BLE001 - no consumer yet (starting, or a test app)
            lag = {}
        for (topic, partition), n in sorted(lag.items()):
            family.add_metric([topic, str(partition)], n)
        yield family


GC_PAUSE = Histogram("timeline_gc_pause_seconds", "Garbage collector pauses of the worker, by generation",
                     ["generation"], buckets=GC_BUCKETS)


def watch_gc() -> None:
    if not any(isinstance(cb, GcPauses) for cb in gc.callbacks):
        gc.callbacks.append(GcPauses(GC_PAUSE))


def lean_monitor(metrics: Any) -> Any:
    """Faust's ``PrometheusMonitor`` with the same metrics, cheaper per message: faust's looks up
    each labelled child (``.labels(...)``: keyword checks, a lock, a dict of label tuples) and
    normalizes the stream's label (string work) on every message, event, table read or write
    and send (4-5% of the worker's GIL-holding samples at a quarter of the burst capacity,
    py-spy, 2026-12-04; a message in, its event in and out, two table operations, a send and
    an end offset: 31-50 us with faust's, 17-31 us with this one, same machine). This one keeps
    the children it used (the labels take a few values: topics, partitions, streams, tables)
    and forgets them whenever faust removes children (a rebalance)."""
    from faust.sensors.monitor import Monitor
    from faust.sensors.prometheus import PrometheusMonitor

    class LeanPrometheusMonitor(PrometheusMonitor):
        def __init__(self, metrics: Any, **kwargs: Any) -> None:
            super().__init__(metrics, **kwargs)
            self._children: dict[tuple, Any] = {}
            self._stream_labels: dict[Any, str] = {}

        def _child(self, metric: Any, *labels: Any) -> Any:
            key = (id(metric), *labels)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = metric.labels(*labels)
            return child

        def _stream_label(self, stream: Any) -> str:
            label = self._stream_labels.get(stream)
            if label is None:
                label = self._stream_labels[stream] = super()._stream_label(stream)
            return label

        def _clear_partition_related_metrics(self) -> None:
            super()._clear_partition_related_metrics()
            self._children.clear()
            self._stream_labels.clear()

        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            Monitor.on_message_in(self, tp, offset, message)
            m = self._metrics
            m.messages_received.inc()
            m.active_messages.inc()
            self._child(m.messages_received_per_topics, tp.topic).inc()
            self._child(m.messages_received_per_topics_partition, tp.topic, tp.partition).set(offset)

        def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Any:
            state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
            m = self._metrics
            m.total_events.inc()
            m.total_active_events.inc()
            self._child(m.total_events_per_stream, f"stream.{self._stream_label(stream)}.events").inc()
            return state

        def _table_op(self, table: Any, operation: str) -> None:
            self._child(self._metrics.table_operations, f"table.{table.name}", operation).inc()

        def on_table_get(self, table: Any, key: Any) -> None:
            Monitor.on_table_get(self, table, key)
            self._table_op(table, self.KEYS_RETRIEVED)

        def on_table_set(self, table: Any, key: Any, value: Any) -> None:
            Monitor.on_table_set(self, table, key, value)
            self._table_op(table, self.KEYS_UPDATED)

        def on_table_del(self, table: Any, key: Any) -> None:
            Monitor.on_table_del(self, table, key)
            self._table_op(table, self.KEYS_DELETED)

        def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
            self._child(self._metrics.topic_messages_sent, f"topic.{topic}").inc()
            return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

        def track_tp_end_offset(self, tp: Any, offset: int) -> None:
            Monitor.track_tp_end_offset(self, tp, offset)
            self._child(self._metrics.topic_partition_end_offset, tp.topic, tp.partition).set(offset)

    return LeanPrometheusMonitor(metrics=metrics)


def install(app: Any, topics: Iterable[str]) -> None:
    """Faust's sensor metrics (``faust_*``) and ours, at ``GET /metrics`` of the worker;
    ``topics`` are the source topics whose consumer lag is reported."""
    from faust.sensors.prometheus import setup_prometheus_sensors

    from agents.failures import retrying_now

    setup_prometheus_sensors(app, pattern="/metrics", registry=REGISTRY, name_prefix="faust")
    app.monitor = lean_monitor(app.monitor._metrics)  # (the same metrics: see lean_monitor)
    REGISTRY.register(ConsumerLagCollector(app, topics))
    watch_gc()

    @app.page("/healthz")
    async def healthz(view: Any, request: Any) -> Any:
        """200 ``{"status": "ok"}``; 503 ``waiting_for_stores`` with the store operations
        retrying a transient error and for how long (the worker is alive and will resume)."""
        waiting = retrying_now()
        body = {"status": "waiting_for_stores" if waiting else "ok", "retrying": waiting}
        return view.json(body, status=503 if waiting else 200)
