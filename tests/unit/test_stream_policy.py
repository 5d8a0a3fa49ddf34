"""Live streams' pure rules: positions (resume without gaps or duplicates), notices, frames;
and read markers (never backwards by accident)."""
from __future__ import annotations

import random

import pytest

from policies.markers import Marker, decide
from policies.stream import (
    KEEP, NOTHING_DUE, Due, Notice, Position, PositionError, advance, decode_notice, decode_position, encode_notice,
    encode_position, frame, gone, react, stage_notices, timers_due, tweet_frames, unsent,
)

LB = 1000  # a small lookback in id units for the tests


def test_unsent_is_new_ids_oldest_first():
    pos = Position(100, (105, 110))
    assert unsent(pos, [120, 110, 105, 103, 99, 100]) == [103, 120]


def test_advance_keeps_ids_within_the_lookback_and_moves_the_floor():
    pos = advance(Position(0), [5000, 4500, 3000], lookback=LB)
    assert pos == Position(4000, (4500, 5000))
    # A tweet landing late, inside the lookback, is still unsent; outside it is not.
    assert unsent(pos, [4200, 3900, 4500, 5000]) == [4200]


def test_advance_caps_the_ids_kept():
    pos = advance(Position(0), range(1, 101), lookback=10**9, keep=KEEP)
    assert len(pos.sent) == KEEP
    assert pos.sent == tuple(range(101 - KEEP, 101))
    assert pos.floor == 100 - KEEP  # everything at or below it was sent


def test_advance_drops_removed_ids():
    assert advance(Position(10, (11, 12, 13)), [], removed=[12], lookback=LB) == Position(10, (11, 13))


def test_gone_names_sent_ids_a_read_no_longer_has():
    assert gone(Position(10, (11, 12, 13)), [13, 11, 9]) == [12]


def test_resume_over_random_landing_orders_has_no_gap_and_no_duplicate():
    """A client that keeps the last event id and reconnects at random points receives every
    tweet once, whatever order tweets land in (each lands within the lookback)."""
    rng = random.Random(7)
    for _ in range(200):
        ids = sorted(rng.sample(range(1, 10_000), 40))
        landing = sorted(ids, key=lambda t: t + rng.randrange(0, LB // 2))  # late by < lookback/2
        timeline: list[int] = []
        received: list[int] = []
        last_event_id = encode_position(Position(0))
        step = 0
        while step < len(landing):
            burst = rng.randrange(1, 5)
            timeline.extend(landing[step:step + burst])
            step += burst
            pos = decode_position(last_event_id)  # every burst a "reconnect"
            new = unsent(pos, [t for t in timeline if t > pos.floor])
            frames, pos = tweet_frames([(t, b"{}") for t in new], pos, lookback=LB)
            received.extend(new)
            if new:
                last_event_id = encode_position(pos)
        assert sorted(received) == ids
        assert len(received) == len(set(received))


def test_position_codec_round_trips_and_accepts_a_tweet_id():
    pos = Position(123, (124, 999))
    assert decode_position(encode_position(pos)) == pos
    assert decode_position("456") == Position(456)
    assert decode_position(encode_position(Position(0))) == Position(0)


@pytest.mark.parametrize("raw", ["", "abc", "1.5.4", "1.5.6.6", "2.5", "1.-1", "01", "1.5." + ".".join(
    str(i) for i in range(6, 6 + KEEP + 1)), str(2**63)])
def test_position_codec_rejects_garbage(raw):
    with pytest.raises(PositionError):
        decode_position(raw)


def test_tweet_frames_carry_the_position_after_each_tweet():
    body, pos = tweet_frames([(7, b'{"b":1}'), (5, b'{"a":1}')], Position(0), lookback=LB)
    assert body == (b'id: 1.0.5\nevent: tweet\ndata: {"a":1}\n\n'
                    b'id: 1.0.5.7\nevent: tweet\ndata: {"b":1}\n\n')
    assert pos == Position(0, (5, 7))
    assert frame("delete", b"{}") == b"event: delete\ndata: {}\n\n"


def test_notice_codec_round_trips():
    n = Notice(((1, 2),), ((3, 4),), (5,), (6,), True, ((7, True),))
    assert decode_notice(encode_notice(n)) == n
    assert Notice().is_empty() and not n.is_empty()
    with pytest.raises(ValueError):
        decode_notice(b"[1]")


def test_react():
    r = react(Notice(added=((1, 2),)))
    assert r.read and not r.deletes and not r.resubscribe
    r = react(Notice(deleted=((1, 2),), unfollowed=(9,)))
    assert not r.read and r.resubscribe
    assert r.deletes == [{"tweet_id": "1", "author_id": "2", "reason": "deleted"},
                         {"author_id": "9", "reason": "unfollowed"}]
    assert react(Notice(followed=(3,))).read  # a follow backfills: read
    assert react(Notice(reset=True)).read


def test_stage_notices_per_user():
    rows = {(1, 10): (True, 100), (1, 11): (False, 101), (2, 12): (True, 102)}
    out = stage_notices(rows, [(1, 11, 101)], {(2, 100): False, (3, 104): True}, [4])
    assert out[1] == Notice(added=((10, 100),), deleted=((11, 101),))
    assert out[2] == Notice(added=((12, 102),), unfollowed=(100,))
    assert out[3] == Notice(followed=(104,))
    assert out[4] == Notice(reset=True)
    only = stage_notices(rows, [(1, 11, 101)], {(2, 100): False, (3, 104): True}, [4], only={2, 4})
    assert only == {2: out[2], 4: out[4]}


# --- markers ---------------------------------------------------------------------------


def test_marker_moves_forward_only_without_version():
    assert decide(None, 10, None) == (("applied", Marker(10, 1), ""))
    m = Marker(10, 1)
    assert decide(m, 12, None).marker == Marker(12, 2)
    assert decide(m, 10, None).outcome == "unchanged"
    stale = decide(m, 9, None)
    assert stale.outcome == "conflict" and stale.marker == m and "version 1" in stale.reason


def _due(now: float, *, last_sent: float, sending_since: float | None = None, last_active: float) -> Due:
    return timers_due(last_sent, sending_since, last_active, now, 15, 10, 240)


def test_a_silent_stream_is_due_a_heartbeat_and_a_busy_one_is_not():
    assert _due(114.9, last_sent=100, last_active=100) is NOTHING_DUE  # the sweep's cheap answer
    assert _due(115, last_sent=100, last_active=100) == Due(heartbeat=True)
    # Events sent keep it from being silent; the activity mark comes whatever was sent.
    assert _due(340, last_sent=339, last_active=100) == Due(activity=True)
    assert _due(340, last_sent=300, last_active=100) == Due(heartbeat=True, activity=True)


def test_a_send_blocked_for_the_timeout_is_cut_and_nothing_else_is_due_meanwhile():
    # Blocked, not yet too long: no heartbeat into a full buffer, no activity mark.
    assert _due(109.9, last_sent=0, sending_since=100, last_active=0) is NOTHING_DUE
    assert _due(110, last_sent=0, sending_since=100, last_active=0) == Due(cut=True)


def test_marker_moves_back_only_at_the_current_version():
    m = Marker(10, 3)
    assert decide(m, 5, 3) == ("applied", Marker(5, 4), "")
    assert decide(m, 50, 2).outcome == "conflict"
    assert decide(None, 5, 1).outcome == "conflict"
    assert decide(None, 5, 0).outcome == "applied"


def test_markers_never_go_backwards_under_any_order_of_unversioned_writes():
    rng = random.Random(3)
    for _ in range(200):
        writes = [rng.randrange(1, 50) for _ in range(20)]
        stored = None
        seen = 0
        for w in writes:
            d = decide(stored, w, None)
            stored = d.marker
            assert stored.last_read_id >= seen
            seen = stored.last_read_id
        assert stored.last_read_id == max(writes)
