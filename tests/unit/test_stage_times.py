"""bench/stage_times.py: two scrapes of the worker's histograms, diffed into where time went."""
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.stage_times import between, diff, parse


def _registry():
    reg = CollectorRegistry()
    secs = Histogram("timeline_batch_seconds", "b", ["stage"], buckets=(0.01, 0.1, 1), registry=reg)
    events = Histogram("timeline_batch_events", "e", ["stage"], buckets=(1, 10, 100), registry=reg)
    sink = Histogram("timeline_sink_seconds", "s", ["what"], buckets=(0.01, 0.1, 1), registry=reg)
    other = Histogram("unrelated_seconds", "u", registry=reg)
    return reg, secs, events, sink, other


def test_diff_counts_only_what_happened_between_the_scrapes():
    reg, secs, events, sink, other = _registry()
    secs.labels("fanout").observe(0.5)  # before the load point
    events.labels("fanout").observe(7)
    before = parse(generate_latest(reg).decode())
    for _ in range(3):
        secs.labels("fanout").observe(0.02)
        events.labels("fanout").observe(4)
    secs.labels("deliver").observe(0.05)
    events.labels("deliver").observe(12)
    sink.labels("claim tweets").observe(0.03)
    sink.labels("claim tweets").observe(0.01)
    sink.labels("publish deliveries").observe(0.02)
    other.observe(5)
    out = diff(before, parse(generate_latest(reg).decode()))
    fan = out["stages"]["fanout"]
    assert fan["batches"] == 3 and fan["events"] == 12 and fan["mean_events_per_batch"] == 4.0
    assert fan["mean_batch_ms"] == 20.0 and fan["p99_batch_ms_at_most"] == 100.0
    assert out["stages"]["deliver"]["mean_events_per_batch"] == 12.0
    claim = out["store_ops"]["claim tweets"]
    assert claim["calls"] == 2 and claim["mean_ms"] == 20.0
    assert claim["share_of_store_time"] == round(0.04 / 0.06, 3)
    assert list(out["store_ops"]) == ["claim tweets", "publish deliveries"]  # largest first
    assert "unrelated" not in str(out)


def test_nothing_happened_is_empty():
    reg, secs, *_ = _registry()
    secs.labels("fanout").observe(0.5)
    snap = parse(generate_latest(reg).decode())
    assert diff(snap, snap) == {"stages": {}, "store_ops": {}}


def test_between_summarizes_one_unlabelled_histogram_between_two_scrapes():
    reg = CollectorRegistry()
    delay = Histogram("timeline_live_event_delay_seconds", "d", buckets=(0.005, 0.05, 0.25), registry=reg)
    names = {"timeline_live_event_delay_seconds": ""}
    delay.observe(1.0)  # before
    before = parse(generate_latest(reg).decode(), names)
    for seconds in [0.001] * 90 + [0.03] * 8 + [0.2, 0.9]:
        delay.observe(seconds)
    out = between(before, parse(generate_latest(reg).decode(), names), ("timeline_live_event_delay_seconds", ""))
    assert out["count"] == 100 and out["p50_ms_at_most"] == 5.0 and out["p99_ms_at_most"] == 250.0
    assert out["share_within_ms"] == {"5.0": 0.9, "50.0": 0.98, "250.0": 0.99}
    assert out["mean_ms"] == round((0.09 + 0.24 + 0.2 + 0.9) * 10, 1)
    assert between(before, before, ("timeline_live_event_delay_seconds", "")) == {"count": 0}
