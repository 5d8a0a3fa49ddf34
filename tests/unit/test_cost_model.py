"""bench/cost_model.py: CPU per delivery split into per row and per (user, push)."""
import pytest

from bench.cost_model import fit, point


def make(deliveries, pushes, row_ms=0.03, push_ms=0.1):
    cpu = deliveries * row_ms / 1000 + pushes * push_ms / 1000
    return point("w", deliveries, {"cassandra": cpu / 2, "worker": cpu / 2, "bench (load generator)": 99.0},
                 [{"command": "zadd", "calls": pushes, "s": 0.1, "us_per_call": 1.0}])


def test_point_leaves_out_the_load_generator():
    p = make(1_000_000, 250_000)
    assert p["rows_per_push"] == 4.0
    assert p["pipeline_cpu_s"] == pytest.approx(55.0)
    assert p["cpu_s_per_1000_deliveries"] == pytest.approx(0.055)


def test_point_needs_deliveries_and_pushes():
    assert point("w", 0, {"x": 1.0}, [{"command": "zadd", "calls": 5}]) is None
    assert point("w", 10, {"x": 1.0}, None) is None
    assert point("w", 10, {"x": 1.0}, [{"command": "set", "calls": 5}]) is None


def test_fit_recovers_the_costs():
    model = fit([make(700_000, 560_000), make(1_400_000, 330_000), make(2_300_000, 100_000)])
    assert model["ms_per_row"] == pytest.approx(0.03, abs=1e-4)
    assert model["ms_per_push"] == pytest.approx(0.1, abs=1e-4)
    assert model["largest_relative_error"] == 0


def test_fit_needs_spread():
    assert fit([make(1_000, 100)]) is None
    assert fit([make(1_000, 100), make(2_000, 200)]) is None  # same rows per push: no slope
