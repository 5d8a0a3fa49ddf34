"""Materialized home-timeline rules (pure; the Cassandra/Redis code applies the results).

A materialized timeline is a set of (tweet_id, author_id) entries plus a ``floor``
tweet id. Invariant: for every *pushed* author the user follows, every tweet of
that author with ``tweet_id > floor`` is in the timeline. Below the floor the
timeline may be incomplete, so reads must pull from the authors' own timelines.

* Ids ``<= floor`` are never added: they are outside the complete window and
  served by pulls (``agents/deliver.py``).
* Following an author adds their newest ``limit`` tweets; if they have more,
  the floor rises to just below the oldest one added (``backfill_window``).
* The Redis copy keeps the newest ``TL_TIMELINE_CAP`` entries of the Cassandra
  timeline (``sinks/redis_timeline.py``, in its push script); Cassandra keeps all.

A read merges sources that were each cut somewhere (the materialized chunk,
each pulled author timeline): ``merge_sources`` keeps only the part every source
vouches for; ``pull_limit`` and ``pull_groups`` size the pulls; ``usable_chunk``
decides whether a copy of the materialized timeline can answer a chunk
(``query/reader.py`` applies them).

Cursors are opaque strings meaning "ids strictly below N", so tweets arriving
after page 1 was served never shift page 2.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import math
import struct
from typing import Iterable, NamedTuple, Sequence

from schemas.events import INT64_MAX


class Backfill(NamedTuple):
    ids_to_add: list[int]  # newest first
    floor_candidate: int | None  # raise the floor to at least this; None = no change needed


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


# --- reads: merging cut sources, sizing pulls ------------------------------------

# Extra entries asked for per chunk, so a few deleted tweets do not cost another round.
SLACK = 5
# The Cassandra driver's default fetch size: one IN query must fit in one result page.
CASSANDRA_PAGE_ROWS = 5000
# Authors per IN query of a pull (groups run concurrently).
PULL_GROUP_MAX = 100
# Fewest ids asked per author in the first round of a pull.
PULL_MIN = 4


class Source(NamedTuple):
    """Ids one source returned for a region, and how far down it vouches for them."""

    ids: Sequence[int]  # descending
    # The source is complete for ids >= this one; None: complete down to the region's bottom.
    vouches_to: int | None


class Merged(NamedTuple):
    candidates: list[int]  # every id >= horizon of every source, descending, unique
    horizon: int | None  # None: every source was exhausted (candidates is the whole region)


def merge_sources(sources: Iterable[Source]) -> Merged:
    """Merge sources that were each cut somewhere; keep only the part all of them vouch for.

    A truncated source says nothing about ids below its last one, so the merge is
    exact only down to the highest of those cut points (the horizon).
    """
    sources = list(sources)
    horizon = max((s.vouches_to for s in sources if s.vouches_to is not None), default=None)
    merged = merge_desc(*(s.ids for s in sources), limit=None)
    if horizon is not None:
        merged = [t for t in merged if t >= horizon]
    return Merged(merged, horizon)


def pull_limit(need: int, authors: int, first_round: bool) -> int:
    """Ids to ask per author: enough for ``need`` from the merge of ``authors`` timelines.

    The first round asks each author for about twice its fair share (a merge of
    many similar timelines takes a few from each); later rounds, which only
    happen when that guess was short, ask for the whole ``need``.
    """
    if need < 1:
        raise ValueError(f"need must be >= 1, got {need}")
    if not first_round or authors <= 1:
        return need
    return min(need, max(PULL_MIN, math.ceil(2 * need / authors) + 1))


def pulled_source(ids_desc: Sequence[int], above: int, limit: int) -> Source:
    """An author's newest ids below a cursor (at most ``limit``, as read) as a merge source:
    the ids above ``above``, vouched for down to the last one when the read was cut at
    ``limit`` (older ids may follow), else to the region's bottom."""
    kept = [t for t in ids_desc if t > above]
    return Source(kept, kept[-1] if len(kept) == limit else None)


def window_pull(ids_desc: Sequence[int], window_size: int, cap: int, above: int, limit: int) -> Source | None:
    """A pull answered from an author's cached window, or None when only the store can answer.

    ``ids_desc``: the window's newest ids below the cursor, at most ``limit`` (as read);
    ``window_size``: how many ids the window holds in all. A window below ``cap`` holds the
    author's whole timeline; a full one only its newest ``cap`` ids, so it answers when the
    read found ``limit`` ids, or reached ``above``, before running out of the window."""
    if window_size < cap or len(ids_desc) >= limit or (ids_desc and ids_desc[-1] <= above):
        return pulled_source(ids_desc[:limit], above, limit)
    return None


def pull_groups(authors: Sequence[int], per_author: int) -> list[list[int]]:
    """Authors split so that one IN query returns at most one page of rows."""
    size = max(1, min(PULL_GROUP_MAX, CASSANDRA_PAGE_ROWS // max(1, per_author)))
    return [list(authors[i : i + size]) for i in range(0, len(authors), size)]


def usable_chunk(
    cursor: int, entries: list[tuple[int, int]], complete: bool, need: int, source: str
) -> tuple[int, list[tuple[int, int]], bool, str] | None:
    """A chunk of at most ``need + SLACK`` entries below ``cursor`` if ``entries`` can answer it.

    ``entries`` are the newest entries below the cursor of a copy that holds the
    whole region when ``complete``, else only a prefix of it (usable when it
    has at least ``need`` entries). None: ask the next store.
    """
    n = need + SLACK
    if len(entries) > n:
        return cursor, entries[:n], False, source
    if complete or len(entries) >= need:
        return cursor, entries, complete, source
    return None


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
