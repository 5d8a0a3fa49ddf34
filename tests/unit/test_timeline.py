import base64
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.timeline import (
    INT64_MAX,
    CursorError,
    backfill_window,
    decode_cursor,
    encode_cursor,
    merge_desc,
)


# --- backfill ----------------------------------------------------------------------

def test_backfill_complete_author_needs_no_floor():
    assert backfill_window([30, 20, 10], limit=5, truncated=False) == ([30, 20, 10], None)


def test_backfill_exactly_limit_not_truncated():
    assert backfill_window([30, 20, 10], limit=3, truncated=False) == ([30, 20, 10], None)


def test_backfill_truncated_raises_floor_below_oldest_added():
    assert backfill_window([30, 20, 10], limit=3, truncated=True) == ([30, 20, 10], 9)


def test_backfill_longer_list_than_limit_is_truncation():
    assert backfill_window([30, 20, 10, 5], limit=2, truncated=False) == ([30, 20], 19)


def test_backfill_unsorted_duplicated_input():
    assert backfill_window([10, 30, 20, 30], limit=2, truncated=False) == ([30, 20], 19)


def test_backfill_limit_zero():
    assert backfill_window([30, 20], limit=0, truncated=False) == ([], 30)
    assert backfill_window([], limit=0, truncated=False) == ([], None)


def test_backfill_truncated_without_ids_is_an_error():
    with pytest.raises(ValueError):
        backfill_window([], limit=10, truncated=True)
    with pytest.raises(ValueError):
        backfill_window([1], limit=-1, truncated=False)


# --- merge_desc ----------------------------------------------------------------------

def test_merge_basic():
    assert merge_desc([9, 5, 1], [8, 5, 2], [], [10], limit=None) == [10, 9, 8, 5, 2, 1]


def test_merge_limit_and_below():
    assert merge_desc([9, 5, 1], [8, 5, 2], limit=3, below=9) == [8, 5, 2]
    assert merge_desc([9, 5, 1], limit=0) == []
    assert merge_desc(limit=5) == []


def test_merge_is_lazy_on_infinite_inputs():
    evens = itertools.count(10**6, -2)
    odds = itertools.count(10**6 - 1, -2)
    assert merge_desc(evens, odds, limit=4, below=10**6) == [999_999, 999_998, 999_997, 999_996]


def test_merge_rejects_non_descending_input():
    with pytest.raises(ValueError, match="not descending"):
        merge_desc([1, 5], limit=None)


def test_merge_bad_limit():
    with pytest.raises(ValueError):
        merge_desc([1], limit=-1)


@given(
    lists=st.lists(st.sets(st.integers(1, 500), max_size=30), max_size=6),
    limit=st.one_of(st.none(), st.integers(0, 60)),
    below=st.one_of(st.none(), st.integers(1, 501)),
)
def test_merge_matches_sort_of_union(lists, limit, below):
    inputs = [sorted(s, reverse=True) for s in lists]
    expected = sorted({x for s in lists for x in s if below is None or x < below}, reverse=True)
    if limit is not None:
        expected = expected[:limit]
    assert merge_desc(*inputs, limit=limit, below=below) == expected


# --- cursors -------------------------------------------------------------------------

URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(st.integers(1, INT64_MAX))
def test_cursor_roundtrip_and_url_safety(tweet_id):
    c = encode_cursor(tweet_id)
    assert set(c) <= URL_SAFE
    assert len(c) == 18
    assert decode_cursor(c) == tweet_id


@given(st.integers(1, INT64_MAX), st.data())
def test_any_single_character_change_is_rejected(tweet_id, data):
    c = encode_cursor(tweet_id)
    pos = data.draw(st.integers(0, len(c) - 1))
    ch = data.draw(st.sampled_from(sorted(URL_SAFE - {c[pos]})))
    with pytest.raises(CursorError):
        decode_cursor(c[:pos] + ch + c[pos + 1 :])


@given(st.text(max_size=40))
def test_garbage_never_decodes_except_real_cursors(s):
    try:
        tweet_id = decode_cursor(s)
    except CursorError:
        return
    assert encode_cursor(tweet_id) == s


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "=" * 18, "not a cursor!!", "A" * 200, None, 123, b"AAAA"],
)
def test_malformed_cursors(bad):
    with pytest.raises(CursorError):
        decode_cursor(bad)


def test_truncated_padded_and_standard_alphabet_variants_rejected():
    c = encode_cursor(123456789)
    for variant in (c[:-1], c + "A", c + "==", "+" + c[1:], c[:-1] + "/", " " + c, c + "\n"):
        with pytest.raises(CursorError):
            decode_cursor(variant)


def test_other_version_rejected():
    raw = bytearray(base64.urlsafe_b64decode(encode_cursor(42) + "=="))
    raw[0] = 2
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(CursorError, match="version"):
        decode_cursor(forged)


def test_keyed_cursors():
    c = encode_cursor(42, key=b"secret")
    assert decode_cursor(c, key=b"secret") == 42
    with pytest.raises(CursorError):
        decode_cursor(c)
    with pytest.raises(CursorError):
        decode_cursor(c, key=b"other")


@pytest.mark.parametrize("bad", [0, -1, INT64_MAX + 1])
def test_encode_out_of_range(bad):
    with pytest.raises(ValueError):
        encode_cursor(bad)


def test_encode_wrong_type():
    with pytest.raises(TypeError):
        encode_cursor(True)
    with pytest.raises(TypeError):
        encode_cursor("5")


def test_cursor_pages_are_stable_under_new_arrivals():
    timeline = list(range(100, 0, -1))
    page1 = merge_desc(timeline, limit=10)
    cursor = encode_cursor(page1[-1])
    # new tweets arrive at the top before page 2 is requested
    timeline = list(range(130, 100, -1)) + timeline
    page2 = merge_desc(timeline, limit=10, below=decode_cursor(cursor))
    assert page2 == list(range(90, 80, -1))
