"""Query-string parsing and response rendering of the query service (pure functions).

Every bad value becomes a :class:`~api.errors.Problem` whose ``detail`` says what
to send instead:

* ``limit``: decimal integer in ``1..MAX_LIMIT``, at most once; default ``DEFAULT_LIMIT``
  (otherwise 422, ``invalid-limit``);
* ``cursor``: the opaque ``next_cursor`` of a previous page
  (:func:`policies.timeline.encode_cursor`, "ids strictly below N"), at most once
  (otherwise 400, ``invalid-cursor``).
"""
from __future__ import annotations

import re
from typing import Any, Literal, Protocol, Sequence

from pydantic import BaseModel, Field

from api.errors import Problem
from api.openapi import ID_PATTERN, query_param
from policies.timeline import CursorError, decode_cursor, encode_cursor
from schemas.tweet_json import render_handle, render_item, render_tail
from schemas.tweet_json import render_page as render_items

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_LIMIT_RE = re.compile(r"[0-9]{1,9}", re.ASCII)
_SHOW_MAX = 40


# The two query parameters of a page, as the OpenAPI description shows them (``api.openapi``).
PAGE_PARAMS = [
    query_param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                "Tweets per page"),
    query_param("cursor", {"type": "string"}, "The next_cursor of the previous page, unchanged"),
]


class TweetItem(BaseModel):
    tweet_id: str = Field(pattern=ID_PATTERN)
    author_id: str = Field(pattern=ID_PATTERN)
    author_handle: str | None = Field(description="null for authors without an account")
    text: str
    created_at: str | None = Field(description="ISO-8601 UTC; null if out of range")


class PageMeta(BaseModel):
    result_count: int
    next_cursor: str | None = Field(description="opaque; null at the real end")
    source: Literal["cache", "store", "rebuilt"]


class PageOut(BaseModel):
    """A page of a timeline, newest first (:func:`render_page`)."""

    data: list[TweetItem]
    meta: PageMeta


class QueryParams(Protocol):
    def getlist(self, key: Any) -> list[str]: ...


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= _SHOW_MAX else raw[:_SHOW_MAX] + "...")


def _single(params: QueryParams, name: str, status: int, slug: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise Problem(status, f"query parameter {name!r} was given {len(values)} times; give it at most once",
                      slug=slug)
    return values[0] if values else None


def parse_limit(params: QueryParams, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    raw = _single(params, "limit", 422, "invalid-limit")
    if raw is None:
        return default
    if not _LIMIT_RE.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise Problem(
            422,
            f"query parameter 'limit' must be an integer from 1 to {maximum} (default {default}), "
            f"got {_shown(raw)}",
            slug="invalid-limit",
        )
    return int(raw)


def parse_cursor(params: QueryParams, key: bytes = b"") -> int | None:
    """The tweet id a ``cursor`` stands for (ids strictly below it), or None for the first page."""
    raw = _single(params, "cursor", 400, "invalid-cursor")
    if raw is None:
        return None
    try:
        return decode_cursor(raw, key)
    except CursorError as exc:
        raise Problem(
            400,
            f"query parameter 'cursor' is not valid ({exc}); pass the 'next_cursor' of the previous "
            "page unchanged, or leave 'cursor' out for the first page",
            slug="invalid-cursor",
        ) from None


def next_cursor(next_below: int | None, key: bytes = b"") -> str | None:
    return None if next_below is None else encode_cursor(next_below, key)


class TweetLike(Protocol):
    tweet_id: int
    author_id: int
    text: str
    created_at: int


def render_page_json(
    tweets: Sequence[TweetLike],
    handles: dict[int, str | None],
    next_below: int | None,
    source: str,
    key: bytes = b"",
) -> bytes:
    """The JSON body of a timeline page; ids as strings (JSON numbers lose int64 precision).
    Assembled from parts (``schemas.tweet_json``): a tweet's pre-rendered tail when the
    cache had one (``rendered``), else rendered here."""
    handle_json = {a: render_handle(h) for a, h in handles.items()}
    null = render_handle(None)
    items = [
        render_item(t.tweet_id, t.author_id, handle_json.get(t.author_id, null),
                    getattr(t, "rendered", None) or render_tail(t.text, t.created_at))
        for t in tweets
    ]
    return render_items(items, {"result_count": len(items), "next_cursor": next_cursor(next_below, key),
                                "source": source})

