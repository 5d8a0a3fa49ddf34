"""The fetch-gathering policy (policies/fetch_gather.py) and its controller's decisions
(streams/fetch_gather.Gatherer) on an object with the fetcher's two settings."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from policies.fetch_gather import AT_ONCE, GATHER_MIN_BYTES, FetchGather, rate_per_s
from streams.fetch_gather import Gatherer, apply


def test_gathers_from_the_threshold_and_stops_under_half_of_it() -> None:
    p = FetchGather(wait_ms=20, above_per_s=100)
    assert not p.gathering(False, 99.9)
    assert p.gathering(False, 100)
    assert p.gathering(True, 60)  # hysteresis: still gathering above half
    assert p.gathering(True, 50)
    assert not p.gathering(True, 49.9)
    assert not p.gathering(False, 60)  # not started again under the threshold


def test_zero_wait_never_gathers() -> None:
    p = FetchGather(wait_ms=0, above_per_s=1)
    assert not p.gathering(False, 10**6) and not p.gathering(True, 10**6)


def test_params() -> None:
    p = FetchGather(wait_ms=25, above_per_s=50)
    assert p.params(True) == (25, GATHER_MIN_BYTES)
    assert p.params(False) == AT_ONCE == (1500, 1)


@pytest.mark.parametrize("wait_ms, above", [(-1, 50), (20, 0), (20, -5)])
def test_rejects_bad_settings(wait_ms: int, above: float) -> None:
    with pytest.raises(ValueError):
        FetchGather(wait_ms, above)


def test_rate() -> None:
    assert rate_per_s(100, 150, 0.5) == 100
    assert rate_per_s(100, 150, 0) == 0
    assert rate_per_s(150, 100, 1) == 0  # a reset count


def fetcher() -> SimpleNamespace:
    return SimpleNamespace(_fetch_max_wait_ms=1500, _fetch_min_bytes=1)


def test_gatherer_switches_with_the_measured_rate() -> None:
    g, f = Gatherer(FetchGather(wait_ms=20, above_per_s=100)), fetcher()
    assert g.tick(f, 0, 0.0)  # the first tick has no rate yet: at once
    assert (f._fetch_max_wait_ms, f._fetch_min_bytes) == AT_ONCE and not g.gathering
    assert g.tick(f, 50, 0.25)  # 200/s
    assert g.gathering and (f._fetch_max_wait_ms, f._fetch_min_bytes) == (20, GATHER_MIN_BYTES)
    assert g.tick(f, 65, 0.5)  # 60/s: above half, still gathering
    assert g.gathering
    assert g.tick(f, 70, 0.75)  # 20/s
    assert not g.gathering and (f._fetch_max_wait_ms, f._fetch_min_bytes) == AT_ONCE


def test_gatherer_sets_a_new_fetcher_again() -> None:
    g, f1 = Gatherer(FetchGather(wait_ms=20, above_per_s=100)), fetcher()
    g.tick(f1, 0, 0.0)
    g.tick(f1, 100, 0.25)
    f2 = fetcher()  # a consumer started again (faust's defaults)
    assert g.tick(f2, 200, 0.5)
    assert (f2._fetch_max_wait_ms, f2._fetch_min_bytes) == (20, GATHER_MIN_BYTES)


def test_a_fetcher_without_the_settings_stops_the_controller() -> None:
    assert not apply(object(), AT_ONCE)
    assert not Gatherer(FetchGather(wait_ms=20, above_per_s=100)).tick(object(), 0, 0.0)
