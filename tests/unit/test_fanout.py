import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.fanout import DEFAULT_BATCH_SIZE, DeliveryBatch, TweetRef, group_by_partition, plan_recipients
from policies.fanout import plan_fanout as plan_grouped_fanout, plan_removal as plan_grouped_removal
from policies.partitioning import partition_for_id
from schemas.events import TweetPosted

TWEET = TweetRef(tweet_id=9001, author_id=7)


def mod(n):
    return lambda user_id: user_id % n


def plan_fanout(tweet, followers, pulled, partition_for, batch_size=DEFAULT_BATCH_SIZE):
    """The fanout agent's way: the author's followers grouped, then the tweet's batches."""
    return plan_grouped_fanout(tweet, plan_recipients(followers, tweet.author_id, partition_for, batch_size), pulled)


def plan_removal(tweet, followers, partition_for, batch_size=DEFAULT_BATCH_SIZE):
    return plan_grouped_removal(tweet, plan_recipients(followers, tweet.author_id, partition_for, batch_size))


def test_celebrity_gets_no_batches():
    assert plan_fanout(TWEET, range(1, 10_000), pulled=True, partition_for=mod(4)) == []


def test_groups_by_partition_and_sorts():
    batches = plan_fanout(TWEET, [10, 3, 5, 8, 1], pulled=False, partition_for=mod(2))
    assert batches == [
        DeliveryBatch(0, (8, 10), 9001, 7, "add"),
        DeliveryBatch(1, (1, 3, 5), 9001, 7, "add"),
    ]


def test_chunking_to_batch_size():
    batches = plan_fanout(TWEET, range(100, 111), pulled=False, partition_for=lambda u: 0, batch_size=4)
    assert [b.recipients for b in batches] == [
        (100, 101, 102, 103),
        (104, 105, 106, 107),
        (108, 109, 110),
    ]
    assert {b.partition for b in batches} == {0}


def test_author_and_duplicates_dropped():
    batches = plan_fanout(TWEET, [7, 1, 1, 2, 7, 2], pulled=False, partition_for=lambda u: 3)
    assert batches == [DeliveryBatch(3, (1, 2), 9001, 7, "add")]


def test_no_followers_no_batches():
    assert plan_fanout(TWEET, [], pulled=False, partition_for=mod(4)) == []
    assert plan_fanout(TWEET, [7], pulled=False, partition_for=mod(4)) == []


def test_generator_followers_and_typed_event():
    event = TweetPosted(tweet_id=5, author_id=1, text="hi", created_at=0)
    batches = plan_fanout(event, (u for u in range(2, 6)), pulled=False, partition_for=mod(2))
    assert sorted(u for b in batches for u in b.recipients) == [2, 3, 4, 5]
    assert all(b.tweet_id == 5 and b.author_id == 1 for b in batches)


def test_removal_has_op_remove_and_ignores_celebrity_status():
    batches = plan_removal(TWEET, [1, 2, 3], partition_for=lambda u: 0)
    assert batches == [DeliveryBatch(0, (1, 2, 3), 9001, 7, "remove")]


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError):
        plan_fanout(TWEET, [1], pulled=False, partition_for=mod(2), batch_size=bad)


@pytest.mark.parametrize("bad", [-1, "0", None, True])
def test_bad_partition_function_result(bad):
    with pytest.raises(ValueError):
        plan_fanout(TWEET, [1], pulled=False, partition_for=lambda u: bad)


def test_delivery_batch_is_frozen():
    b = DeliveryBatch(0, (1,), 2, 3)
    with pytest.raises(AttributeError):
        b.partition = 1  # type: ignore[misc]
    assert b.op == "add"


@given(
    followers=st.lists(st.integers(1, 5_000), max_size=400),
    author=st.integers(1, 5_000),
    partitions=st.integers(1, 16),
    batch_size=st.integers(1, 50),
)
def test_every_follower_exactly_once_in_the_right_partition(followers, author, partitions, batch_size):
    tweet = TweetRef(123, author)
    part = lambda u: partition_for_id(u, partitions)  # noqa: E731
    batches = plan_fanout(tweet, followers, False, part, batch_size)
    delivered = Counter(u for b in batches for u in b.recipients)
    assert set(delivered) == set(followers) - {author}
    assert all(c == 1 for c in delivered.values())
    for b in batches:
        assert 1 <= len(b.recipients) <= batch_size
        assert all(part(u) == b.partition for u in b.recipients)
        assert list(b.recipients) == sorted(b.recipients)
        assert (b.tweet_id, b.author_id, b.op) == (123, author, "add")
    # per partition: only the last batch may be short, and partitions are ascending
    parts = [b.partition for b in batches]
    assert parts == sorted(parts)
    for p in set(parts):
        sizes = [len(b.recipients) for b in batches if b.partition == p]
        assert all(s == batch_size for s in sizes[:-1])
    # the minimum number of batches
    per_part = Counter(part(u) for u in delivered)
    assert len(batches) == sum(-(-n // batch_size) for n in per_part.values())
    # removal plans the same recipients
    removal = plan_removal(tweet, followers, part, batch_size)
    assert [b.recipients for b in removal] == [b.recipients for b in batches]
    assert all(b.op == "remove" for b in removal)


def test_group_by_partition_coalesces_and_keeps_order():
    a = plan_fanout(TweetRef(1, 100), [1, 2, 3, 4], False, mod(2))
    r = plan_removal(TweetRef(1, 100), [1, 2, 3, 4], mod(2))
    b = plan_fanout(TweetRef(2, 200), [5, 6], False, mod(2))
    grouped = group_by_partition(a + r + b)
    assert list(grouped) == [0, 1]
    assert [(d.tweet_id, d.op, d.recipients) for d in grouped[0]] == [
        (1, "add", (2, 4)),
        (1, "remove", (2, 4)),
        (2, "add", (6,)),
    ]
    assert [(d.tweet_id, d.op, d.recipients) for d in grouped[1]] == [
        (1, "add", (1, 3)),
        (1, "remove", (1, 3)),
        (2, "add", (5,)),
    ]
    assert group_by_partition([]) == {}


@given(st.lists(st.tuples(st.integers(0, 8), st.integers(1, 100)), max_size=60))
def test_group_by_partition_is_a_stable_partition(items):
    batches = [DeliveryBatch(p, (u,), i, 1) for i, (p, u) in enumerate(items)]
    grouped = group_by_partition(batches)
    assert sum(len(g) for g in grouped.values()) == len(batches)
    for p, group in grouped.items():
        assert group == [b for b in batches if b.partition == p]
    assert list(grouped) == sorted(grouped)


def test_ten_thousand_followers_is_fast():
    followers = list(range(1_000, 11_000))  # author 7 not among them
    start = time.perf_counter()
    batches = plan_fanout(TWEET, followers, False, lambda u: partition_for_id(u, 64))
    elapsed = time.perf_counter() - start
    assert sum(len(b.recipients) for b in batches) == 10_000
    assert elapsed < 2.0  # ~30 ms typical; generous for loaded CI machines


def test_is_pulled_only_after_the_promotion_point():
    from policies.fanout import is_pulled

    assert not is_pulled(False, 0, 10)
    assert not is_pulled(True, 10, 10), "pushed before the promotion: pushed again on a replay"
    assert is_pulled(True, 10, 11)


def test_plan_recipients_groups_and_leaves_the_author_out():
    from policies.fanout import plan_recipients

    assert plan_recipients([5, 1, 4, 2, 7, 7], 7, lambda u: u % 2, batch_size=2) == [(0, (2, 4)), (1, (1, 5))]
