import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.activity import DEFAULT_INACTIVE_AFTER_MS, is_active
from settings import Settings

DAY = 24 * 3600 * 1000


def test_unknown_user_is_active():
    assert is_active(None, 10**13, DAY) is True


def test_recent_activity_is_active():
    assert is_active(1_000, 1_000 + DAY - 1, DAY) is True


def test_boundary_exactly_inactive_after_is_still_active():
    assert is_active(1_000, 1_000 + DAY, DAY) is True
    assert is_active(1_000, 1_000 + DAY + 1, DAY) is False


def test_long_silence_is_inactive():
    assert is_active(0, 31 * DAY, DEFAULT_INACTIVE_AFTER_MS) is False
    assert is_active(0, 29 * DAY, DEFAULT_INACTIVE_AFTER_MS) is True


def test_activity_after_the_tweet_time_is_active():
    # event time: the user was active after the tweet was created (e.g. during a replay)
    assert is_active(5 * DAY, 1 * DAY, DAY) is True


def test_default_matches_settings():
    assert DEFAULT_INACTIVE_AFTER_MS == Settings().inactive_after_ms


def test_negative_window_rejected():
    with pytest.raises(ValueError):
        is_active(0, 0, -1)


@given(
    last=st.integers(0, 2**45),
    now=st.integers(0, 2**45),
    window=st.integers(0, 2**40),
)
def test_monotone_in_time_and_window(last, now, window):
    active = is_active(last, now, window)
    assert active == (now - last <= window)
    if not active:
        # later tweets still find the user inactive; a shorter window too
        assert not is_active(last, now + 1, window)
        if window:
            assert not is_active(last, now, window - 1)
    else:
        # more recent activity or a longer window keeps them active
        assert is_active(last + 1, now, window)
        assert is_active(last, now, window + 1)
