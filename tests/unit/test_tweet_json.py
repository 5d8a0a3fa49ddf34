"""Page JSON assembled from pre-rendered parts is byte for byte what orjson writes for the page
as a dict (the response format before bodies were pre-rendered), whatever the text (no servers)."""
from __future__ import annotations

from dataclasses import dataclass

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from query.params import next_cursor, render_page_json
from schemas.tweet_json import iso_ms, render_handle, render_item, render_tail


@dataclass
class T:
    tweet_id: int
    author_id: int
    text: str
    created_at: int
    rendered: bytes | None = None


def as_dict(tweets: list[T], handles: dict[int, str | None], next_below: int | None, source: str) -> bytes:
    data = [{"tweet_id": str(t.tweet_id), "author_id": str(t.author_id), "author_handle": handles.get(t.author_id),
             "text": t.text, "created_at": iso_ms(t.created_at)} for t in tweets]
    return orjson.dumps({"data": data, "meta": {"result_count": len(data), "next_cursor": next_cursor(next_below),
                                                 "source": source}})


TEXTS = ["hi", "", 'quo"te \\ back', "tab\tnew\nline\x00\x1f", "caf\u00e9 \u2713 \U0001F600", "\u2028\u2029", "</script>"]


def test_parts_equal_the_dict_rendering():
    tweets = [T(2**63 - 1 - i, 7 + i % 3, text, created) for i, text in enumerate(TEXTS)
              for created in (0, 1_700_000_000_123, 2**63 - 1, -1)]
    handles = {7: "ann", 8: None}
    want = as_dict(tweets, handles, 5, "cache")
    assert render_page_json(tweets, handles, 5, "cache") == want
    # The same with every tail pre-rendered (as the cache holds them).
    for t in tweets:
        t.rendered = render_tail(t.text, t.created_at)
    assert render_page_json(tweets, handles, 5, "cache") == want
    assert render_page_json([], {}, None, "store") == as_dict([], {}, None, "store")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(-(2**63), 2**63 - 1), st.one_of(st.none(), st.text(max_size=20)))
def test_any_text_time_and_handle(text, created, handle):
    t = T(123, 45, text, created, render_tail(text, created))
    assert render_page_json([t], {45: handle}, None, "rebuilt") == as_dict([t], {45: handle}, None, "rebuilt")
    assert orjson.loads(render_item(1, 2, render_handle(handle), render_tail(text, created))) == {
        "tweet_id": "1", "author_id": "2", "author_handle": handle, "text": text, "created_at": iso_ms(created)}
