"""Live streams' fast path (pure rules): a notice that carries what was written lets a woken
stream send it without a read, and every case it cannot be sure of falls back to a read."""
from __future__ import annotations

from policies.stream import (
    ITEMS_MAX_BYTES, Item, Notice, Position, decode_notice, encode_notice, notice_items, plan_wake, react,
)

TAIL = b',"text":"hi","created_at":null}'


def test_items_round_trip_on_the_wire():
    n = Notice(added=((5, 2),), items=((5, 2, TAIL),))
    assert decode_notice(encode_notice(n)) == n
    pulled = Notice(added=((6, 9),), items=((6, 9, TAIL),), pulled=True)
    assert decode_notice(encode_notice(pulled)) == pulled
    stamped = n._replace(sent_at=1796143774.907689)
    assert decode_notice(encode_notice(stamped)) == stamped


def test_items_over_the_bytes_cap_become_a_plain_look_notice():
    big = b',"text":"' + b"x" * 300 + b'","created_at":null}'
    n = Notice(added=tuple((t, 2) for t in range(1, 100)), items=tuple((t, 2, big) for t in range(1, 100)))
    assert sum(len(t) for *_, t in n.items) > ITEMS_MAX_BYTES
    wire = decode_notice(encode_notice(n))
    assert wire.items == () and wire.added == n.added
    assert react(wire).read and not react(wire).items


def test_react_sends_the_items_without_a_read():
    r = react(Notice(added=((5, 2),), items=((5, 2, TAIL),)))
    assert not r.read and r.items == [Item(5, 2, TAIL, False)]


def test_react_reads_when_it_cannot_be_sure():
    assert react(Notice(added=((5, 2),))).read  # no items (an older stage, a missing body)
    assert react(Notice(added=((5, 2), (7, 3)), items=((5, 2, TAIL),))).read  # one missing
    assert react(Notice(added=((5, 2),), items=((5, 4, TAIL),))).read  # another author's
    assert react(Notice(added=((5, 2),), items=((5, 2, TAIL),), reset=True)).read  # rebuilt timeline
    assert react(Notice(added=((5, 2),), items=((5, 2, TAIL),), followed=(2,))).read  # backfill lands
    assert react(Notice(reset=True)).read  # the hub's reconnect
    assert notice_items(Notice(added=((5, 2),), items=((5, 2, TAIL),), followed=(3,))) is None


def test_react_delete_only_notice_needs_no_read():
    r = react(Notice(deleted=((5, 2),)))
    assert not r.read and r.items == [] and r.deletes[0]["reason"] == "deleted"


def test_plan_wake_sends_only_what_the_position_lacks_oldest_first():
    pos = Position(100, (105,))
    ready = [Item(120, 2, TAIL, False), Item(105, 2, TAIL, False), Item(99, 2, TAIL, False),
             Item(110, 7, TAIL, True)]
    wake = plan_wake(pos, ready, read_due=False, deletes=False, resubscribed=False, celebrities={7})
    assert not wake.read and [i.tweet_id for i in wake.send] == [110, 120]


def test_plan_wake_falls_back_to_a_read():
    pos = Position(100)
    ready = [Item(120, 2, TAIL, False)]
    kw = dict(read_due=False, deletes=False, resubscribed=False, celebrities=set())
    assert plan_wake(pos, ready, **{**kw, "read_due": True}).read
    assert plan_wake(pos, ready, **{**kw, "deletes": True}).read
    assert plan_wake(pos, ready, **{**kw, "resubscribed": True}).read
    assert plan_wake(pos, ready * 3, **kw, max_ready=2).read
    # a celebrity's tweet of an author no longer followed: the read decides
    assert plan_wake(pos, [Item(120, 7, TAIL, True)], **kw).read
    assert not plan_wake(pos, [Item(120, 7, TAIL, True)], **{**kw, "celebrities": {7}}).read
    # nothing ready, nothing due: nothing to do
    assert plan_wake(pos, [], **kw) == (False, [])
    # deletes alone: no read (sent as delete events)
    assert plan_wake(pos, [], **{**kw, "deletes": True}) == (False, [])
