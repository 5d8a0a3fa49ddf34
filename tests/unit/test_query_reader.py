"""The reader's pure helpers: merging cut sources, pull sizes, cache windows."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.timeline import (
    CASSANDRA_PAGE_ROWS,
    PULL_GROUP_MAX,
    PULL_MIN,
    SLACK,
    Source,
    merge_sources,
    pull_groups,
    pull_limit,
    pulled_source,
    usable_chunk,
    window_pull,
)
from schemas.events import INT64_MAX as MAX_ID
from sinks.redis_timeline import SENTINEL_ID, lex_below, member, parse_member, window_entries


# --- merge_sources ------------------------------------------------------------------------


def test_exhausted_sources_merge_completely():
    merged = merge_sources([Source([9, 5, 1], None), Source([8, 5, 2], None), Source([], None)])
    assert merged.candidates == [9, 8, 5, 2, 1]
    assert merged.horizon is None


def test_a_cut_source_limits_the_merge_to_its_last_id():
    # The second source stopped at 6: it may have ids below 6 that belong before 4.
    merged = merge_sources([Source([9, 4, 1], None), Source([8, 7, 6], 6)])
    assert merged.candidates == [9, 8, 7, 6]
    assert merged.horizon == 6


def test_the_highest_cut_wins():
    merged = merge_sources([Source([20, 10], 10), Source([19, 15], 15), Source([18, 3], None)])
    assert merged.candidates == [20, 19, 18, 15]
    assert merged.horizon == 15


def test_a_cut_source_whose_ids_were_filtered_still_sets_the_horizon():
    # The materialized source vouches to its last row even if that row's author was unfollowed.
    merged = merge_sources([Source([], 7), Source([9, 8, 2], None)])
    assert merged.candidates == [9, 8]
    assert merged.horizon == 7


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(1, 300), max_size=40), min_size=1, max_size=6), st.integers(1, 15))
def test_candidates_are_exactly_the_truth_above_the_horizon(timelines, cut):
    """Cutting each source at ``cut`` ids never yields a wrong or missing id above the horizon."""
    truth = sorted({t for tl in timelines for t in tl}, reverse=True)
    sources = []
    for tl in timelines:
        ids = sorted(set(tl), reverse=True)
        kept = ids[:cut]
        sources.append(Source(kept, kept[-1] if len(ids) > cut else None))
    merged = merge_sources(sources)
    if merged.horizon is None:
        assert merged.candidates == truth
    else:
        assert merged.candidates == [t for t in truth if t >= merged.horizon]
        assert merged.candidates  # progress is always possible


# --- pull sizes ---------------------------------------------------------------------------


def test_pull_limit_first_round_shares_the_need():
    assert pull_limit(55, 1, True) == 55
    assert pull_limit(55, 11, True) == 11  # ceil(2 * 55 / 11) + 1
    assert pull_limit(55, 51, True) == PULL_MIN
    assert pull_limit(3, 2, True) == 3  # never more than the need
    assert pull_limit(55, 51, False) == 55  # later rounds ask for everything


def test_pull_limit_rejects_nothing_needed():
    with pytest.raises(ValueError):
        pull_limit(0, 3, True)


@pytest.mark.parametrize("authors,per_author", [(1, 5), (50, 55), (250, 4), (1000, 200), (7, 10_000)])
def test_pull_groups_fit_one_result_page(authors, per_author):
    ids = list(range(authors))
    groups = pull_groups(ids, per_author)
    assert [a for g in groups for a in g] == ids
    assert all(1 <= len(g) <= PULL_GROUP_MAX for g in groups)
    assert all(len(g) * per_author <= CASSANDRA_PAGE_ROWS or len(g) == 1 for g in groups)


# --- cache windows ------------------------------------------------------------------------


def test_lex_below_excludes_the_cursor_and_keeps_lower_ids():
    assert lex_below(MAX_ID) == "+"
    bound = lex_below(1000)
    assert bound == "(" + "0" * 15 + "1000"
    assert member(1000, 7) > bound[1:]  # the cursor's own member sorts above the exclusive bound
    assert member(999, 7) < bound[1:]


def test_lexicographic_order_of_members_is_numeric_order():
    ids = random.Random(1).sample(range(1, 2**63 - 1), 200)
    members = sorted(member(t, 1) for t in ids)
    assert [int(m.split(":")[0]) for m in members] == sorted(ids)


def test_members_are_the_zero_padded_id_and_the_author():
    rng = random.Random(2)
    for t in [0, 1, 2**63 - 1, *(rng.randrange(2**63) for _ in range(300))]:
        a = rng.randrange(2**63)
        assert member(t, a) == f"{t:019d}:{a}" and parse_member(member(t, a)) == (t, a)


def test_window_entries_drop_the_sentinel_and_the_floor():
    window = [member(9, 1).encode(), member(7, 2).encode(), member(5, 1).encode(), member(SENTINEL_ID, 6).encode()]
    assert window_entries(window, 6) == [(9, 1), (7, 2)]
    assert window_entries(window, 0) == [(9, 1), (7, 2), (5, 1)]


def test_usable_chunk():
    entries = [(t, 1) for t in range(100, 80, -1)]  # 20 entries
    need = 10
    # More than need + SLACK: cut, not done.
    assert usable_chunk(500, entries, True, need, "cache") == (500, entries[: need + SLACK], False, "cache")
    # A complete copy answers even when short: done.
    assert usable_chunk(500, entries[:3], True, need, "cache") == (500, entries[:3], True, "cache")
    # A prefix copy answers only with at least ``need`` entries, and is never done.
    assert usable_chunk(500, entries[:need], False, need, "store") == (500, entries[:need], False, "store")
    assert usable_chunk(500, entries[: need - 1], False, need, "store") is None


# --- window_pull: a pulled author's cached window -------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    ids=st.sets(st.integers(1, 400), max_size=60),
    cap=st.integers(1, 30),
    below=st.integers(1, 402),
    above=st.integers(0, 400),
    limit=st.integers(1, 25),
)
def test_a_window_answers_a_pull_exactly_as_the_store_or_not_at_all(ids, cap, below, above, limit):
    # The store: the author's whole timeline. The cache rule: a window holds its newest cap ids.
    store = sorted(ids, reverse=True)
    window = store[:cap]
    read = [t for t in window if t < below][:limit]  # what read_many returns of the window
    expected = pulled_source([t for t in store if t < below][:limit], above, limit)
    answer = window_pull(read, len(window), cap, above, limit)
    if answer is not None:
        assert answer == expected
    if len(window) < cap:  # the whole timeline is cached: the window always answers
        assert answer == expected


def test_a_full_window_sends_a_read_below_it_to_the_store():
    window = [90, 80, 70]  # cap 3: older ids may exist in the store
    assert window_pull([70], 3, 3, 0, 5) is None  # ran out of the window before finding 5
    assert window_pull([], 3, 3, 0, 5) is None
    assert window_pull([80, 70], 3, 3, 75, 5) == Source([80], None)  # reached "above" inside it
    assert window_pull(window, 3, 3, 0, 3) == Source(window, 70)  # found the limit: vouches to 70
    assert window_pull([70], 2, 3, 0, 5) == Source([70], None)  # not full: the whole timeline
