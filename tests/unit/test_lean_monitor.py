"""``agents.metrics.lean_monitor``: faust's Prometheus sensor metrics, the same samples for the
same hook calls as faust's own ``PrometheusMonitor``, also after a rebalance removed children."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from agents.metrics import lean_monitor


class Owner:
    pass


class Stream:
    def __init__(self, label: str) -> None:
        self.shortlabel = f"Stream: {label}"
        self.task_owner = Owner()

    def __str__(self) -> str:
        return self.shortlabel


class Table:
    def __init__(self, name: str) -> None:
        self.name = name


def drive(monitor: Any, rounds: int) -> None:
    """Hook calls as a worker makes them, then a rebalance, then more."""
    streams = [Stream("tweets"), Stream("timeline-deliveries")]
    tables = [Table("authors"), Table("recipients")]
    for r in range(rounds):
        for i in range(3):
            tp = TP("tweets" if i % 2 else "deliveries", i)
            monitor.on_message_in(tp, 10 * r + i, SimpleNamespace())
            monitor.track_tp_end_offset(tp, 10 * r + i + 5)
            stream = streams[i % 2]
            state = monitor.on_stream_event_in(tp, 10 * r + i, stream, SimpleNamespace())
            monitor.on_stream_event_out(tp, 10 * r + i, stream, SimpleNamespace(), state)
            monitor.on_table_get(tables[i % 2], b"k")
            monitor.on_table_set(tables[i % 2], b"k", b"v")
            if i == 2:
                monitor.on_table_del(tables[0], b"k")
            monitor.on_send_initiated(None, f"out-{i % 2}", SimpleNamespace(), 1, 2)
        if r == rounds // 2:  # a rebalance: faust removes the per-topic and per-partition children
            monitor._clear_partition_related_metrics()


def samples(registry: CollectorRegistry) -> dict[tuple, float]:
    out = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name.endswith(("_created", "_sum", "_bucket", "_count")):
                continue  # timestamps and latencies differ between runs
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_lean_monitor_keeps_faust_metrics_sample_for_sample() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    drive(PrometheusMonitor(metrics=FaustMetrics.create(theirs, "faust")), rounds=6)
    lean = lean_monitor(FaustMetrics.create(ours, "faust"))
    drive(lean, rounds=6)
    expected = samples(theirs)
    assert expected[("faust_messages_received_total", ())] == 18
    assert ("faust_topic_partition_end_offset", (("partition", "1"), ("topic", "tweets"))) in expected
    assert samples(ours) == expected
    assert lean._children, "children are kept between calls"
