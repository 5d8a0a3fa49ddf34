"""Query-string parsing and rendering of the query service (no servers)."""
from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest
from starlette.datastructures import QueryParams

from api.errors import Problem
from query.params import DEFAULT_LIMIT, MAX_LIMIT, next_cursor, parse_cursor, parse_limit, render_page_json
from schemas.tweet_json import iso_ms
from policies.timeline import encode_cursor


def qp(query: str) -> QueryParams:
    return QueryParams(query)


@pytest.mark.parametrize("query,expected", [("", DEFAULT_LIMIT), ("limit=1", 1), ("limit=200", MAX_LIMIT),
                                            ("limit=007", 7), ("other=5", DEFAULT_LIMIT)])
def test_limit_ok(query, expected):
    assert parse_limit(qp(query)) == expected


@pytest.mark.parametrize("raw", ["0", "201", "-1", "1.5", "1e2", "ten", "", " 5", "5 ", "+5", "9" * 40, "٣"])
def test_limit_bad_is_422_with_the_range(raw):
    with pytest.raises(Problem) as err:
        parse_limit(QueryParams([("limit", raw)]))
    assert err.value.status == 422
    assert err.value.slug == "invalid-limit"
    assert "from 1 to 200" in err.value.detail
    assert len(err.value.detail) < 200  # long input is shortened


def test_limit_twice_is_422():
    with pytest.raises(Problem) as err:
        parse_limit(qp("limit=5&limit=5"))
    assert err.value.status == 422 and "at most once" in err.value.detail


def test_cursor_round_trip():
    assert parse_cursor(qp("")) is None
    assert parse_cursor(QueryParams([("cursor", encode_cursor(42))])) == 42
    assert parse_cursor(QueryParams([("cursor", next_cursor(2**63 - 1))])) == 2**63 - 1
    assert next_cursor(None) is None


@pytest.mark.parametrize("raw", ["", "abc", "=" * 18, "A" * 18, "x" * 1000, "\u00e9" * 18, "AR1lxufxALAAZDEa0x"])
def test_cursor_bad_is_400_saying_what_to_send(raw):
    with pytest.raises(Problem) as err:
        parse_cursor(QueryParams([("cursor", raw)]))
    assert err.value.status == 400
    assert err.value.slug == "invalid-cursor"
    assert "next_cursor" in err.value.detail


def test_cursor_of_another_key_is_refused():
    with pytest.raises(Problem):
        parse_cursor(QueryParams([("cursor", encode_cursor(42, b"k1"))]), b"k2")


def test_iso_ms():
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert iso_ms(1_700_000_000_999) == "2023-11-14T22:13:20.999Z"
    assert iso_ms(2**63 - 1) is None  # any int64 is a valid event time; no datetime holds it


@dataclass
class T:
    tweet_id: int
    author_id: int
    text: str
    created_at: int


def test_render_page_uses_strings_for_ids():
    body = orjson.loads(render_page_json([T(2**62, 7, "hi", 1000), T(5, 8, "yo", 0)], {7: "ann"}, 5, "cache"))
    assert body == {
        "data": [
            {"tweet_id": str(2**62), "author_id": "7", "author_handle": "ann", "text": "hi",
             "created_at": "1970-01-01T00:00:01.000Z"},
            {"tweet_id": "5", "author_id": "8", "author_handle": None, "text": "yo",
             "created_at": "1970-01-01T00:00:00.000Z"},
        ],
        "meta": {"result_count": 2, "next_cursor": encode_cursor(5), "source": "cache"},
    }
