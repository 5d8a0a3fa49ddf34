import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.celebrity import CelebrityRule, celebrity_transition, check_constants, is_celebrity_next
from settings import Settings


@pytest.mark.parametrize(
    "currently,followers,expected",
    [
        (False, 9_999, False),
        (False, 10_000, True),
        (False, 50_000, True),
        (False, 9_500, False),  # inside the band: a non-celebrity stays one
        (True, 10_000, True),
        (True, 9_000, True),  # exactly threshold - hysteresis: still a celebrity
        (True, 8_999, False),
        (True, 9_999, True),
        (True, 0, False),
        (False, 0, False),
    ],
)
def test_defaults(currently, followers, expected):
    assert is_celebrity_next(currently, followers) is expected


def test_account_hovering_at_10000_does_not_flap():
    counts = [9_990, 10_000, 9_999, 10_001, 9_950, 10_000, 9_500, 10_200, 9_001, 9_000, 9_999]
    status = False
    transitions = []
    for n in counts:
        t = celebrity_transition(status, n)
        if t:
            transitions.append(t)
        status = is_celebrity_next(status, n)
    assert transitions == ["promoted"]
    assert status is True


def test_falls_below_band_then_returns():
    status, seen = False, []
    for n in [10_000, 8_999, 9_500, 9_999, 10_000]:
        seen.append(celebrity_transition(status, n))
        status = is_celebrity_next(status, n)
    assert seen == ["promoted", "demoted", None, None, "promoted"]


def test_transition_values():
    assert celebrity_transition(False, 10_000) == "promoted"
    assert celebrity_transition(True, 8_999) == "demoted"
    assert celebrity_transition(True, 9_500) is None
    assert celebrity_transition(False, 9_500) is None
    assert celebrity_transition(True, 20_000) is None


def test_zero_hysteresis_is_a_plain_threshold():
    assert is_celebrity_next(True, 99, threshold=100, hysteresis=0) is False
    assert is_celebrity_next(False, 100, threshold=100, hysteresis=0) is True


@pytest.mark.parametrize("threshold,hysteresis", [(100, 100), (100, 150), (100, -1), (0, 0)])
def test_bad_constants_rejected(threshold, hysteresis):
    with pytest.raises(ValueError):
        check_constants(threshold, hysteresis)
    with pytest.raises(ValueError):
        is_celebrity_next(False, 5, threshold, hysteresis)
    with pytest.raises(ValueError):
        CelebrityRule(threshold, hysteresis)


def test_settings_defaults_satisfy_the_constant_relationship():
    s = Settings()
    assert 0 <= s.celebrity_hysteresis < s.celebrity_threshold
    rule = CelebrityRule(s.celebrity_threshold, s.celebrity_hysteresis)
    assert rule.next(False, s.celebrity_threshold) is True
    assert rule.transition(True, s.celebrity_threshold - s.celebrity_hysteresis - 1) == "demoted"


constants = st.integers(1, 100_000).flatmap(lambda t: st.tuples(st.just(t), st.integers(0, t - 1)))


@given(constants, st.booleans(), st.lists(st.integers(0, 200_000), max_size=60))
def test_properties_over_any_count_history(consts, start, counts):
    threshold, hysteresis = consts
    status = start
    for n in counts:
        nxt = is_celebrity_next(status, n, threshold, hysteresis)
        if n >= threshold:
            assert nxt is True
        elif n < threshold - hysteresis:
            assert nxt is False
        else:
            assert nxt is status  # inside the band the status is sticky
        t = celebrity_transition(status, n, threshold, hysteresis)
        assert t == ("promoted" if nxt and not status else "demoted" if status and not nxt else None)
        status = nxt


@given(constants, st.lists(st.integers(-1, 1), max_size=200))
def test_hovering_inside_band_flaps_at_most_once(consts, steps):
    """A count that never leaves [threshold - hysteresis, threshold + ...) changes status at most once."""
    threshold, hysteresis = consts
    n = threshold
    status = False
    changes = 0
    for d in steps:
        n = max(threshold - hysteresis, n + d)
        t = celebrity_transition(status, n, threshold, hysteresis)
        changes += t is not None
        status = is_celebrity_next(status, n, threshold, hysteresis)
    assert changes <= 1
