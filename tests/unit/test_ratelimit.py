import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.ratelimit import BucketState, full_refill_s, retry_after_header, take


def test_first_request_starts_with_a_full_bucket():
    r = take(None, 100.0, burst=5, rate_per_s=1)
    assert r.allowed and r.retry_after_s == 0.0
    assert r.state == BucketState(4.0, 100.0)


def test_burst_then_denied_with_exact_retry_after():
    state = None
    for _ in range(5):
        r = take(state, 0.0, burst=5, rate_per_s=0.5)
        assert r.allowed
        state = r.state
    r = take(state, 0.0, burst=5, rate_per_s=0.5)
    assert not r.allowed
    assert r.retry_after_s == pytest.approx(2.0)  # one token at 0.5/s
    assert r.state.tokens == pytest.approx(0.0)


def test_partial_refill_retry_after():
    r = take(BucketState(0.25, 10.0), 10.0, burst=5, rate_per_s=0.5, cost=1)
    assert not r.allowed
    assert r.retry_after_s == pytest.approx(1.5)


def test_refill_is_capped_at_burst():
    r = take(BucketState(0.0, 0.0), 1_000_000.0, burst=5, rate_per_s=1)
    assert r.allowed and r.state.tokens == pytest.approx(4.0)


def test_clock_going_back_refills_nothing_and_keeps_time():
    r = take(BucketState(0.0, 50.0), 40.0, burst=5, rate_per_s=1)
    assert not r.allowed
    assert r.state == BucketState(0.0, 50.0)
    assert r.retry_after_s == pytest.approx(1.0)


def test_denied_request_consumes_nothing():
    r = take(BucketState(0.5, 0.0), 0.0, burst=5, rate_per_s=1)
    assert not r.allowed and r.state.tokens == pytest.approx(0.5)


def test_cost_and_zero_cost():
    r = take(BucketState(3.0, 0.0), 0.0, burst=5, rate_per_s=1, cost=3)
    assert r.allowed and r.state.tokens == pytest.approx(0.0)
    r = take(BucketState(0.0, 0.0), 0.0, burst=5, rate_per_s=1, cost=0)
    assert r.allowed


def test_stored_tokens_above_a_lowered_burst_are_clamped():
    r = take(BucketState(50.0, 0.0), 1.0, burst=10, rate_per_s=1)
    assert r.allowed and r.state.tokens == pytest.approx(9.0)


@pytest.mark.parametrize(
    "burst,rate,cost", [(0, 1, 0), (5, 0, 1), (5, -1, 1), (5, 1, 6), (5, 1, -1)]
)
def test_invalid_parameters(burst, rate, cost):
    with pytest.raises(ValueError):
        take(None, 0.0, burst, rate, cost)


def test_helpers():
    assert full_refill_s(50, 0.5) == 100
    assert full_refill_s(5, 3) == 2
    assert retry_after_header(0.01) == 1
    assert retry_after_header(2.0) == 2
    assert retry_after_header(2.1) == 3


@settings(max_examples=300)
@given(
    burst=st.integers(1, 20),
    rate=st.floats(0.01, 10),
    steps=st.lists(st.tuples(st.floats(0, 5), st.integers(0, 3)), max_size=100),
)
def test_never_admits_more_than_burst_plus_refill(burst, rate, steps):
    state, now, admitted = None, 0.0, 0
    for dt, cost in steps:
        now += dt
        cost = min(cost, burst)
        r = take(state, now, burst, rate, cost)
        assert 0.0 <= r.state.tokens <= burst
        assert r.state.updated_s == now
        if r.allowed:
            admitted += cost
            assert r.retry_after_s == 0.0
        else:
            assert r.retry_after_s > 0
            # waiting exactly retry_after succeeds, a bit less does not
            assert take(r.state, now + r.retry_after_s, burst, rate, cost).allowed
            if r.retry_after_s > 1e-6:
                assert not take(r.state, now + r.retry_after_s * 0.99, burst, rate, cost).allowed
        state = r.state
    assert admitted <= burst + rate * now + 1e-6


@given(burst=st.integers(1, 20), rate=st.floats(0.01, 10), idle=st.floats(0, 1e4))
def test_a_state_missing_after_ttl_equals_a_full_bucket(burst, rate, idle):
    """Expiring the key after full_refill_s must be indistinguishable from keeping it."""
    empty = BucketState(0.0, 0.0)
    ttl = full_refill_s(burst, rate)
    kept = take(empty, ttl + idle, burst, rate)
    fresh = take(None, ttl + idle, burst, rate)
    assert kept.allowed == fresh.allowed
    assert math.isclose(kept.state.tokens, fresh.state.tokens, abs_tol=1e-9)
