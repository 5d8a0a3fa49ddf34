"""Materialized home-timeline rules (pure; the Cassandra/Redis code applies the results).

A materialized timeline is a set of ``Entry(tweet_id, author_id)`` plus a ``floor``
tweet id. Invariant: for every *pushed* author the user follows, every tweet of
that author with ``tweet_id > floor`` is in the timeline. Below the floor the
timeline may be incomplete, so reads must pull from the authors' own timelines.

* Trimming to ``cap`` raises the floor to the newest dropped id.
* Ids ``<= floor`` are never added (and existing ones are dropped): they are
  outside the complete window and served by pulls.
* Following an author adds their newest ``limit`` tweets; if they have more,
  the floor rises to just below the oldest one added.

Cursors are opaque strings meaning "ids strictly below N", so tweets arriving
after page 1 was served never shift page 2.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import struct
from typing import Iterable, NamedTuple

DEFAULT_CAP = 800
INT64_MAX = 2**63 - 1


class Entry(NamedTuple):
    tweet_id: int
    author_id: int


class TimelineUpdate(NamedTuple):
    kept: list[Entry]  # the whole timeline after the change, newest first
    dropped_ids: list[int]  # ids (existing or offered) not kept, newest first; delete the stored ones
    floor: int  # the new floor, >= the old one


class Backfill(NamedTuple):
    ids_to_add: list[int]  # newest first
    floor_candidate: int | None  # raise the floor to at least this; None = no change needed


def apply_add(
    entries_sorted_desc: Iterable[tuple[int, int]],
    new_entries: Iterable[tuple[int, int]],
    cap: int = DEFAULT_CAP,
    floor: int = 0,
) -> TimelineUpdate:
    """Add ``new_entries`` ((tweet_id, author_id) pairs), dedupe, keep the newest ``cap``.

    New ids ``<= floor`` are ignored; existing ones ``<= floor`` are dropped.
    ``new floor = max(floor, max(dropped_ids))``. On a duplicate id the existing
    entry wins. Input order does not matter.
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    by_id: dict[int, int] = {}
    below: list[int] = []
    for tweet_id, author_id in entries_sorted_desc:
        if tweet_id <= floor:
            below.append(tweet_id)
        elif tweet_id not in by_id:
            by_id[tweet_id] = author_id
    for tweet_id, author_id in new_entries:
        if tweet_id > floor and tweet_id not in by_id:
            by_id[tweet_id] = author_id
    ordered = sorted(by_id, reverse=True)
    kept = [Entry(tweet_id, by_id[tweet_id]) for tweet_id in ordered[:cap]]
    trimmed = ordered[cap:]
    new_floor = max(floor, trimmed[0]) if trimmed else floor
    dropped = trimmed + sorted(set(below), reverse=True)
    return TimelineUpdate(kept, dropped, new_floor)


def apply_remove(entries: Iterable[tuple[int, int]], tweet_ids: Iterable[int]) -> list[Entry]:
    """The entries without ``tweet_ids`` (deleted tweets). The floor is unchanged."""
    gone = set(tweet_ids)
    return [Entry(t, a) for t, a in entries if t not in gone]


def remove_author(entries: Iterable[tuple[int, int]], author_id: int) -> list[Entry]:
    """The entries without ``author_id``'s tweets (after an unfollow). The floor is unchanged."""
    return [Entry(t, a) for t, a in entries if a != author_id]


def backfill_window(author_recent_ids_desc: Iterable[int], limit: int, truncated: bool) -> Backfill:
    """Which of a newly followed author's tweets to add, and the floor that keeps the window complete.

    ``author_recent_ids_desc``: the author's newest tweet ids; ``truncated``: the
    author has older tweets not in that list. If anything of the author is left
    out, ``floor_candidate`` is ``oldest added - 1`` (or, with nothing added,
    the newest id left out), so every author id above the floor is added.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    ids = sorted(set(author_recent_ids_desc), reverse=True)
    to_add = ids[:limit]
    left_out = truncated or len(ids) > limit
    if not left_out:
        return Backfill(to_add, None)
    if to_add:
        return Backfill(to_add, to_add[-1] - 1)
    if ids:
        return Backfill([], ids[0])
    raise ValueError("truncated=True with no ids: the floor cannot be placed above unknown tweets")


def apply_backfill(
    entries_sorted_desc: Iterable[tuple[int, int]],
    author_id: int,
    author_recent_ids_desc: Iterable[int],
    *,
    limit: int,
    truncated: bool,
    cap: int = DEFAULT_CAP,
    floor: int = 0,
) -> TimelineUpdate:
    """``backfill_window`` then ``apply_add`` with the floor raised first (the right order)."""
    window = backfill_window(author_recent_ids_desc, limit, truncated)
    if window.floor_candidate is not None:
        floor = max(floor, window.floor_candidate)
    return apply_add(entries_sorted_desc, ((t, author_id) for t in window.ids_to_add), cap, floor)


def merge_desc(*iterables_desc: Iterable[int], limit: int | None, below: int | None = None) -> list[int]:
    """K-way merge of descending id sequences: unique, ``< below`` if given, at most ``limit``.

    Lazy: stops pulling from the inputs once ``limit`` ids are produced. Raises
    ValueError if an input turns out not to be descending.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    out: list[int] = []
    if limit == 0:
        return out
    previous: int | None = None
    for tweet_id in heapq.merge(*iterables_desc, reverse=True):
        if previous is not None and tweet_id >= previous:
            if tweet_id == previous:
                continue
            raise ValueError(f"merge_desc input is not descending: {tweet_id} after {previous}")
        previous = tweet_id
        if below is not None and tweet_id >= below:
            continue
        out.append(tweet_id)
        if limit is not None and len(out) >= limit:
            break
    return out


# --- cursors -----------------------------------------------------------------

class CursorError(ValueError):
    """A cursor that is malformed, corrupted or from another version/key."""


CURSOR_VERSION = 1
_CURSOR_STRUCT = struct.Struct(">BQ")  # version, tweet id
_CURSOR_CHECK_BYTES = 4
_CURSOR_RAW_LEN = _CURSOR_STRUCT.size + _CURSOR_CHECK_BYTES  # 13 bytes -> 18 base64url chars
_CURSOR_MAX_CHARS = 64


def _cursor_check(payload: bytes, key: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_CURSOR_CHECK_BYTES, key=key, person=b"tl-cursor").digest()


def encode_cursor(last_tweet_id: int, key: bytes = b"") -> str:
    """Opaque URL-safe cursor for "ids strictly below ``last_tweet_id``".

    base64url (unpadded) of version byte + uint64 id + 4-byte blake2b check.
    Without ``key`` the check catches corruption and truncation, not forgery;
    forging gains nothing (any id is a valid page position). Pass a secret
    ``key`` to make cursors unforgeable.
    """
    if isinstance(last_tweet_id, bool) or not isinstance(last_tweet_id, int):
        raise TypeError(f"cursor id must be an int, got {type(last_tweet_id).__name__}")
    if not 0 < last_tweet_id <= INT64_MAX:
        raise ValueError(f"cursor id must be in 1..{INT64_MAX}, got {last_tweet_id}")
    payload = _CURSOR_STRUCT.pack(CURSOR_VERSION, last_tweet_id)
    raw = payload + _cursor_check(payload, key)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: object, key: bytes = b"") -> int:
    """The tweet id in a cursor from :func:`encode_cursor`, or raise :class:`CursorError`."""
    if not isinstance(cursor, str):
        raise CursorError(f"cursor must be a string, got {type(cursor).__name__}")
    if not cursor or len(cursor) > _CURSOR_MAX_CHARS:
        raise CursorError(f"cursor has {len(cursor)} characters, not a valid cursor")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise CursorError("cursor is not base64url") from None
    if len(raw) != _CURSOR_RAW_LEN:
        raise CursorError(f"cursor decodes to {len(raw)} bytes, expected {_CURSOR_RAW_LEN}")
    payload, check = raw[: _CURSOR_STRUCT.size], raw[_CURSOR_STRUCT.size :]
    version, tweet_id = _CURSOR_STRUCT.unpack(payload)
    if version != CURSOR_VERSION:
        raise CursorError(f"cursor version {version} is not supported")
    if check != _cursor_check(payload, key):
        raise CursorError("cursor checksum does not match (corrupted or tampered)")
    if not 0 < tweet_id <= INT64_MAX:
        raise CursorError("cursor id is out of range")
    if encode_cursor(tweet_id, key) != cursor:
        raise CursorError("cursor is not in canonical form")
    return tweet_id
