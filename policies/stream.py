"""Live home-timeline streams (Server-Sent Events): positions, resume, notices, frames (pure).

A stream sends a user's new tweets as they land in the home timeline. What it sends
is always read *from the timeline* (``query/stream.py`` reads ``since`` its position,
as ``GET .../timelines/home?since_id=`` does), so a stream shows exactly what a read
would: current followees only, no deleted tweets, celebrities' pulled tweets merged
in. The pipeline only says *when* to look (:class:`Notice`, published by stage 2 and
the celebrity path on Redis pub/sub); a lost notice delays an event until the next
notice, heartbeat or reconnect, it never loses it.

Position and resume
-------------------

Tweets do not land in id order: a celebrity's pulled tweet is visible as soon as stage 1
stored it, a pushed one after stage 2 wrote it, and two authors' tweets go through
different partitions. "Everything above the last id sent" would skip a tweet with a
smaller id that lands just after. So a :class:`Position` is a ``floor`` and the ids
``sent`` above it: the client holds every timeline tweet at or below ``floor`` (as far
as a read could tell when it was passed) and, above it, exactly ``sent``. The floor
trails the newest id sent by ``lookback`` (Snowflake time: ``LOOKBACK_MS``) and at most
``KEEP`` ids are kept above it, so a tweet that lands up to ``LOOKBACK_MS`` after a newer
one is still sent, once. Every tweet event's SSE ``id`` is the encoded position
(:func:`encode_position`); a client that reconnects with ``Last-Event-ID`` resumes from
it: no gap (within the lookback), no duplicate. A plain tweet id (the newest one a
client shows) is accepted as a position too.

Falling behind
--------------

A resume more than ``MAX_CATCH_UP`` tweets behind, or a stream with more than
``MAX_PENDING`` undelivered delete events, is not buffered: it gets a ``reset`` event
(reload the top of the timeline, then reconnect) and is closed.
"""
from __future__ import annotations

import re
from typing import Iterable, NamedTuple, Sequence

import orjson

from policies.snowflake import TIMESTAMP_SHIFT
from schemas.events import INT64_MAX

# A tweet landing this long (in Snowflake time) after a newer one was sent is still sent.
LOOKBACK_MS = 10_000
LOOKBACK_IDS = LOOKBACK_MS << TIMESTAMP_SHIFT
# Ids kept above the floor (a position's size); more in the lookback raise the floor.
KEEP = 16
# A stream more than this many tweets behind is reset rather than replayed.
MAX_CATCH_UP = 1000
# Delete events waiting to be sent before a stream counts as fallen behind.
MAX_PENDING = 256
# A notice carries the written tweets' page items up to this many bytes of tails; over it, the
# notice only says "look" (the stream reads).
ITEMS_MAX_BYTES = 16_384

_POSITION_RE = re.compile(r"1\.(0|[1-9][0-9]{0,18})((?:\.[1-9][0-9]{0,18}){0,%d})" % KEEP, re.ASCII)
_ID_RE = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)


class PositionError(ValueError):
    """A Last-Event-ID that is neither a position from this stream nor a tweet id."""


class Position(NamedTuple):
    floor: int
    sent: tuple[int, ...] = ()  # ids above floor, ascending


def unsent(position: Position, timeline_ids: Iterable[int]) -> list[int]:
    """The ids of a read since ``position.floor`` that the client does not have, oldest first."""
    have = set(position.sent)
    return sorted(t for t in set(timeline_ids) if t > position.floor and t not in have)


def gone(position: Position, timeline_ids: Iterable[int]) -> list[int]:
    """Ids the client was sent that a complete read since the floor no longer has (deleted
    tweets, unfollowed authors): the client should drop them."""
    present = set(timeline_ids)
    return [t for t in position.sent if t not in present]


def advance(position: Position, sent: Iterable[int], *, removed: Iterable[int] = (),
            lookback: int = LOOKBACK_IDS, keep: int = KEEP) -> Position:
    """The position after sending ``sent`` and dropping ``removed``."""
    drop = set(removed)
    ids = sorted((set(position.sent) | set(sent)) - drop)
    floor = position.floor
    if ids:
        floor = max(floor, ids[-1] - lookback)
    ids = [t for t in ids if t > floor]
    if len(ids) > keep:
        floor = ids[-keep - 1]
        ids = ids[-keep:]
    return Position(floor, tuple(ids))


def encode_position(position: Position) -> str:
    """``1.<floor>[.<id>...]``: the SSE event id of a tweet event."""
    return ".".join(["1", str(position.floor), *map(str, position.sent)])


def decode_position(raw: str) -> Position:
    """A position from ``Last-Event-ID`` (or ``since_id``): an encoded position or a tweet id."""
    raw = raw.strip()
    if _ID_RE.fullmatch(raw) and int(raw) <= INT64_MAX:
        return Position(int(raw))
    match = _POSITION_RE.fullmatch(raw)
    if match is None:
        raise PositionError(f"not a stream position or a tweet id: {raw[:60]!r}")
    floor = int(match.group(1))
    sent = tuple(int(t) for t in match.group(2).split(".")[1:])
    if any(t > INT64_MAX for t in (floor, *sent)) or list(sent) != sorted(set(sent)) or (sent and sent[0] <= floor):
        raise PositionError(f"not a valid stream position: {raw[:60]!r}")
    return Position(floor, sent)


# --- notices: what the pipeline publishes ---------------------------------------------------


class Notice(NamedTuple):
    """What a stage wrote for one user (or, on an author's channel, for every follower)."""

    added: tuple[tuple[int, int], ...] = ()  # (tweet, author) landed in the timeline
    deleted: tuple[tuple[int, int], ...] = ()  # (tweet, author) deleted by its author
    unfollowed: tuple[int, ...] = ()  # authors whose tweets left the timeline
    followed: tuple[int, ...] = ()  # authors followed (their celebrity channel may be needed)
    reset: bool = False  # the timeline was rebuilt or its floor moved: read it again
    celebrities: tuple[tuple[int, bool], ...] = ()  # (author, is celebrity now): subscriptions change
    # What was written, for a stream to send without a read (see ``plan_wake``): the page item's
    # tail (``schemas.tweet_json.render_tail``) of each tweet in ``added``, all of them or none.
    items: tuple[tuple[int, int, bytes], ...] = ()  # (tweet, author, tail)
    pulled: bool = False  # on a celebrity's channel (stage 1): a follower's stream must follow them now
    # When the stage published it, right after its writes (epoch s; 0: unknown): a stream measures
    # from it how long its events took (``timeline_live_event_delay_seconds``).
    sent_at: float = 0.0

    def is_empty(self) -> bool:
        return not (self.added or self.deleted or self.unfollowed or self.followed or self.reset
                    or self.celebrities)


def encode_notice(notice: Notice) -> bytes:
    out: dict[str, object] = {}
    for name, key in (("added", "a"), ("deleted", "d"), ("unfollowed", "u"), ("followed", "f"),
                      ("celebrities", "c")):
        value = getattr(notice, name)
        if value:
            out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
    if notice.reset:
        out["r"] = 1
    if notice.pulled:
        out["p"] = 1
    if notice.sent_at:
        out["w"] = notice.sent_at
    if notice.items:
        items = [[t, a, tail.decode()] for t, a, tail in notice.items]
        if sum(len(tail) for _, _, tail in notice.items) <= ITEMS_MAX_BYTES:
            out["i"] = items
    return orjson.dumps(out)


def decode_notice(raw: bytes | str) -> Notice:
    """A notice from the wire; ValueError if it is not one (a foreign publisher)."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a notice is a JSON object")

    def pairs(key: str) -> tuple[tuple[int, int], ...]:
        return tuple((int(t), int(a)) for t, a in data.get(key, ()))

    return Notice(pairs("a"), pairs("d"), tuple(int(a) for a in data.get("u", ())),
                  tuple(int(a) for a in data.get("f", ())), bool(data.get("r")),
                  tuple((int(a), bool(c)) for a, c in data.get("c", ())),
                  tuple((int(t), int(a), str(tail).encode()) for t, a, tail in data.get("i", ())),
                  bool(data.get("p")), float(data.get("w", 0.0)))


class Item(NamedTuple):
    """A tweet a notice says was written, ready to send: its page item's tail."""

    tweet_id: int
    author_id: int
    tail: bytes
    pulled: bool  # a celebrity's tweet (their channel), not a row of the user's timeline


class Reaction(NamedTuple):
    read: bool  # read the timeline since the position
    deletes: list[dict[str, str]]  # delete events to send
    resubscribe: bool  # the followed celebrities may have changed
    items: list[Item] = []  # sendable without a read (when ``read`` is False)


def notice_items(notice: Notice) -> list[Item] | None:
    """The notice's written tweets, ready to send; None when a read is needed instead: the
    timeline was rebuilt or a followee added (older tweets land), or the notice does not
    carry every added tweet (over the bytes cap, a body missing or deleted, an older stage)."""
    if notice.reset or notice.followed:
        return None
    tails = {t: (a, tail) for t, a, tail in notice.items}
    if any(t not in tails or tails[t][0] != a for t, a in notice.added):
        return None
    return [Item(t, a, tails[t][1], notice.pulled) for t, a in notice.added]


def react(notice: Notice) -> Reaction:
    """What an open stream does with a notice."""
    deletes = [{"tweet_id": str(t), "author_id": str(a), "reason": "deleted"} for t, a in notice.deleted]
    deletes += [{"author_id": str(a), "reason": "unfollowed"} for a in notice.unfollowed]
    resubscribe = bool(notice.followed or notice.unfollowed or notice.celebrities)
    items = notice_items(notice) if notice.added else []
    if items is not None and not notice.reset and not notice.followed:
        return Reaction(False, deletes, resubscribe, items)
    return Reaction(True, deletes, resubscribe)


class Wake(NamedTuple):
    read: bool  # read the timeline since the position (what was ready is covered by it)
    send: list[Item]  # else: these, oldest first (not sent yet, above the floor)


def plan_wake(position: Position, ready: Sequence[Item], *, read_due: bool, deletes: bool,
              resubscribed: bool, celebrities: set[int], max_ready: int = MAX_CATCH_UP) -> Wake:
    """What a woken stream does: send the notices' items without a read when it can be sure
    they are what a read would add (a read since the floor finds them, nothing else is due),
    else read. A read when: a notice asked for one (``read_due``: no items, a rebuilt
    timeline, a follow, the pub/sub connection was lost); delete events are due or the
    followed celebrities changed in the same wake (a ready tweet may have left the timeline
    meanwhile); a celebrity's tweet whose author the user does not follow (now); more ready
    than ``max_ready`` (the read decides whether the stream is behind)."""
    if read_due:
        return Wake(True, [])
    if not ready:
        return Wake(False, [])
    if deletes or resubscribed or len(ready) > max_ready:
        return Wake(True, [])
    if any(i.pulled and i.author_id not in celebrities for i in ready):
        return Wake(True, [])
    by_id = {i.tweet_id: i for i in ready}
    return Wake(False, [by_id[t] for t in unsent(position, by_id)])


class Due(NamedTuple):
    cut: bool = False  # a send blocked too long: the client does not read; close
    heartbeat: bool = False  # silent too long: a comment line keeps proxies from closing it
    activity: bool = False  # mark the user active (stage 2 keeps delivering to an open stream)


NOTHING_DUE = Due()
_CUT = Due(cut=True)


def timers_due(last_sent: float, sending_since: float | None, last_active: float, now: float,
               heartbeat_s: float, send_timeout_s: float, activity_every_s: float) -> Due:
    """What an open stream's clocks (monotonic seconds: the end of its last send, the start of
    a send under way or None, its user's last activity mark) ask for at ``now``. Checked for
    every stream by a periodic sweep of its process (``query/live.py``), not by timers of its
    own per event: so it is cheap (positional arguments, ``NOTHING_DUE`` itself when nothing
    is due, the common case), ~0.2 us against ~1.8 us with a named tuple and keywords."""
    if sending_since is not None:
        return _CUT if now - sending_since >= send_timeout_s else NOTHING_DUE
    heartbeat = now - last_sent >= heartbeat_s
    activity = now - last_active >= activity_every_s
    return Due(False, heartbeat, activity) if heartbeat or activity else NOTHING_DUE


def stage_notices(rows: dict[tuple[int, int], tuple[bool, int]], deleted: Iterable[tuple[int, int, int]],
                  follows: dict[tuple[int, int], bool], reset: Iterable[int],
                  only: set[int] | None = None, tails: dict[int, bytes] | None = None) -> dict[int, Notice]:
    """Stage 2's notices for one batch: per user, the rows it added, the deletes (user, tweet,
    author) it applied, the follows (True) and unfollows (False) and the users whose
    timeline was rebuilt or whose floor moved. ``only``: for these users alone (those with
    an open stream), the others' are not built. ``tails``: tweet -> page-item tail, carried
    as the notice's items (a tweet without one: the stream reads)."""
    def wanted(user: int) -> bool:
        return only is None or user in only

    added: dict[int, list[tuple[int, int]]] = {}
    for (user, tweet), (present, author) in rows.items():
        if present and wanted(user):
            added.setdefault(user, []).append((tweet, author))
    gone: dict[int, list[tuple[int, int]]] = {}
    for user, tweet, author in deleted:
        if wanted(user):
            gone.setdefault(user, []).append((tweet, author))
    fol: dict[int, list[int]] = {}
    unf: dict[int, list[int]] = {}
    for (user, author), on in follows.items():
        if wanted(user):
            (fol if on else unf).setdefault(user, []).append(author)
    reset = {u for u in reset if wanted(u)}
    users = set(added) | set(gone) | set(fol) | set(unf) | reset
    tails = tails or {}
    return {u: Notice(tuple(sorted(added.get(u, ()))), tuple(sorted(gone.get(u, ()))),
                      tuple(sorted(unf.get(u, ()))), tuple(sorted(fol.get(u, ()))), u in reset,
                      items=tuple((t, a, tails[t]) for t, a in sorted(added.get(u, ())) if t in tails))
            for u in users}


# --- frames ---------------------------------------------------------------------------------


def frame(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """One SSE event (``data`` is one line of JSON)."""
    head = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
    return head + b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def tweet_frames(items: Sequence[tuple[int, bytes]], position: Position, *, lookback: int = LOOKBACK_IDS,
                 keep: int = KEEP) -> tuple[bytes, Position]:
    """Tweet events for ``items`` (tweet id, its JSON), oldest first, each carrying the position
    after it as its id; and the final position."""
    out = []
    for tweet_id, data in sorted(items):
        position = advance(position, (tweet_id,), lookback=lookback, keep=keep)
        out.append(frame("tweet", data, encode_position(position)))
    return b"".join(out), position
