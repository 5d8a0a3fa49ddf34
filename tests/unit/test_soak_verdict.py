"""bench.soak's definition of flat: memory and consumer lag."""
from __future__ import annotations

from bench.soak_report import verdict


def samples(worker_mb, lag, every_s=10.0):
    return [{"t_s": (i + 1) * every_s, "lag_total": lg,
             "rss_mb": {"worker": mb, "post_service": 80.0, "query_service": 90.0, "load_generator": 100.0 + i}}
            for i, (mb, lg) in enumerate(zip(worker_mb, lag))]


def test_steady_memory_and_lag_that_comes_and_goes_are_flat():
    n = 60  # 10 minutes of 10-s samples
    worker = [300.0 + (i % 3) for i in range(n)]
    lag = [(i * 37) % 900 for i in range(n)]
    v = verdict(samples(worker, lag), warmup_min=2, drain_s=3.0)
    assert v["flat"], v
    assert v["rss"]["worker"]["growth"] < 0.01


def test_memory_growing_10_percent_after_warm_up_is_not_flat():
    n = 60
    worker = [300.0 + 1.0 * i for i in range(n)]  # +~48 MB over 8 minutes: ~14%
    v = verdict(samples(worker, [0] * n), warmup_min=2, drain_s=1.0)
    assert not v["flat"]
    assert not v["rss"]["worker"]["flat"] and v["rss"]["worker"]["slope_mb_per_min"] > 5


def test_growing_lag_or_a_slow_drain_is_not_flat():
    n = 60
    flat_mb = [300.0] * n
    growing = [100 * i for i in range(n)]  # a backlog that keeps growing
    assert not verdict(samples(flat_mb, growing), warmup_min=2, drain_s=5.0)["lag"]["trend_flat"]
    slow = verdict(samples(flat_mb, [50] * n), warmup_min=2, drain_s=300.0)
    assert slow["lag"]["trend_flat"] and not slow["flat"]
    assert not verdict(samples(flat_mb, [50] * n), warmup_min=2, drain_s=None)["flat"]


def test_too_short_a_run_is_not_called_flat():
    assert not verdict(samples([300.0] * 14, [0] * 14), warmup_min=2, drain_s=1.0)["flat"]
