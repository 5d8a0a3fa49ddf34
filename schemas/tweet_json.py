"""The JSON of a tweet in a timeline page (the read API's contract), rendered in parts.

A page item is ``{"tweet_id": "<id>", "author_id": "<id>", "author_handle": <handle or
null>, "text": <text>, "created_at": <ISO-8601 UTC or null>}``, exactly as ``orjson``
writes it (no spaces, keys in this order). Everything after the handle depends on the
tweet alone and never changes (a tweet id is posted once, ``policies.first_wins``), so it
is rendered once, when the body is cached (:func:`render_tail`, kept in Redis by
``sinks.redis_tweets``), and a page is assembled by concatenation
(:func:`render_item`). Pure functions; ``tests/unit/test_tweet_json.py`` checks the
assembled bytes against ``orjson.dumps`` of the same page as a dict.
"""
from __future__ import annotations

from datetime import datetime, timezone

import orjson


def iso_ms(ms: int) -> str | None:
    """Epoch milliseconds as ISO-8601 UTC (``2024-01-31T12:00:00.123Z``); None if out of range.

    Integer arithmetic: ms / 1000 as a float can land a microsecond early and truncate.
    Tweets from outside producers may carry any int64, which no datetime can hold.
    """
    try:
        dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc).replace(microsecond=(ms % 1000) * 1000)
    except (OverflowError, OSError, ValueError):
        return None
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_tail(text: str, created_at: int) -> bytes:
    """The part of a page item after the handle: ``,"text":...,"created_at":...}``."""
    return b',"text":' + orjson.dumps(text) + b',"created_at":' + orjson.dumps(iso_ms(created_at)) + b"}"


def render_handle(handle: str | None) -> bytes:
    """The JSON of an author handle (``null`` for an author without an account)."""
    return orjson.dumps(handle)


def render_item(tweet_id: int, author_id: int, handle_json: bytes, tail: bytes) -> bytes:
    """One page item from its parts (``handle_json``: :func:`render_handle`, ``tail``: :func:`render_tail`)."""
    return b'{"tweet_id":"%d","author_id":"%d","author_handle":%b%b' % (tweet_id, author_id, handle_json, tail)


def render_page(items: list[bytes], meta: dict[str, object]) -> bytes:
    """A page: ``{"data": [items], "meta": meta}``."""
    return b'{"data":[' + b",".join(items) + b'],"meta":' + orjson.dumps(meta) + b"}"
