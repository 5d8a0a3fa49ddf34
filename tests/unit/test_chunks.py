"""policies/chunks.py: a batch's users grouped into chunks of bounded writes."""
from hypothesis import given, strategies as st

from policies.chunks import plan_chunks
import pytest


def test_users_in_order_never_split_heavy_ones_alone():
    weights = {1: 3, 2: 3, 3: 10, 4: 1, 5: 1}
    assert plan_chunks(weights, 6) == [[1, 2], [3], [4, 5]]
    assert plan_chunks(weights, 100) == [[1, 2, 3, 4, 5]]
    assert plan_chunks({}, 5) == []
    with pytest.raises(ValueError):
        plan_chunks(weights, 0)


@given(st.dictionaries(st.integers(0, 10_000), st.integers(1, 50), max_size=200), st.integers(1, 120))
def test_every_user_once_in_order_and_chunks_bounded(weights, max_rows):
    chunks = plan_chunks(weights, max_rows)
    assert [k for c in chunks for k in c] == list(weights)
    for c in chunks:
        assert c
        total = sum(weights[k] for k in c)
        assert total <= max_rows or len(c) == 1
    # Consecutive chunks could not have been merged (greedy: a chunk ends only when the next user does not fit).
    for a, b in zip(chunks, chunks[1:]):
        assert sum(weights[k] for k in a) + weights[b[0]] > max_rows
