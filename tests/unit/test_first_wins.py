"""``policies.first_wins``: the first post of a tweet id wins; only its author deletes it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from policies.first_wins import (
    Delete,
    Post,
    StoredTweet,
    delete_verdict,
    not_author_reason,
    post_verdict,
    same_tweet,
    settle,
    taken_reason,
)
from schemas import TweetDeleted, TweetPosted

FIRST = TweetPosted(100, 7, "hello", 1_000)
STORED = StoredTweet.of_post(FIRST)


def test_the_same_post_again_is_the_same_tweet() -> None:
    assert same_tweet(STORED, FIRST)
    assert post_verdict(STORED, TweetPosted(100, 7, "hello", 1_000)) is Post.SAME


def test_a_stored_delete_mark_does_not_make_a_replayed_post_a_conflict() -> None:
    deleted = StoredTweet(100, 7, "hello", 1_000, deleted_at=5_000)
    assert post_verdict(deleted, FIRST) is Post.SAME


@pytest.mark.parametrize(
    "other",
    [
        TweetPosted(100, 8, "hello", 1_000),  # another author
        TweetPosted(100, 7, "hello!", 1_000),  # another text
        TweetPosted(100, 7, "hello", 1_001),  # another time
        TweetPosted(100, 8, "spam", 9_999),  # everything
    ],
    ids=["author", "text", "created_at", "all"],
)
def test_any_difference_is_a_conflict(other: TweetPosted) -> None:
    assert not same_tweet(STORED, other)
    assert post_verdict(STORED, other) is Post.CONFLICT


def test_settle_takes_the_claimed_winner_with_cassandra_s_marks() -> None:
    winner = StoredTweet(100, 7, "first", 1_000)
    other = StoredTweet(101, 8, "other", 2_000)
    rows = {
        101: StoredTweet(101, 8, "other", 2_000, deleted_at=3_000),  # the winner's body, deleted since
        102: StoredTweet(102, None, None, None, deleted_at=5_000),  # an older worker's placeholder
        103: StoredTweet(103, 9, "only deleted", 1_500),  # a deleted id, not posted in the batch
    }
    got = settle({100: winner, 101: other, 102: StoredTweet(102, 7, "late", 4_000)}, rows)
    assert got[100] == winner, "no Cassandra row yet: PostgreSQL's winner"
    assert got[101].deleted_at == 3_000, "Cassandra's mark is kept"
    assert got[102] == StoredTweet(102, 7, "late", 4_000, deleted_at=5_000), "the placeholder's mark stays"
    assert not got[102].placeholder
    assert got[103] == rows[103]
    assert post_verdict(got[102], TweetPosted(102, 7, "late", 4_000)) is Post.SAME


def test_cassandra_s_row_wins_over_a_claim_it_predates() -> None:
    # A body an LWT stored before claims moved to PostgreSQL, for an id the projection had
    # not reached: Cassandra's row is the winner, the claim's other post a conflict.
    old = StoredTweet(100, 7, "first", 1_000)
    got = settle({100: StoredTweet(100, 8, "second", 2_000)}, {100: old})
    assert got[100] == old
    assert post_verdict(got[100], TweetPosted(100, 8, "second", 2_000)) is Post.CONFLICT


def test_text_is_compared_exactly() -> None:
    # NFC normalisation happens at decode; the stored text is what the winner carried.
    assert post_verdict(StoredTweet(1, 7, "café", 0), TweetPosted(1, 7, "cafe\u0301", 0)) is Post.CONFLICT
    assert post_verdict(StoredTweet(1, 7, "a", 0), TweetPosted(1, 7, "a ", 0)) is Post.CONFLICT


def test_delete_by_the_author_applies_by_anyone_else_does_not() -> None:
    assert delete_verdict(STORED, TweetDeleted(100, 7, 2_000)) is Delete.APPLY
    assert delete_verdict(STORED, TweetDeleted(100, 8, 2_000)) is Delete.NOT_AUTHOR


def test_delete_before_any_post_is_early_whoever_sends_it() -> None:
    assert delete_verdict(None, TweetDeleted(100, 7, 2_000)) is Delete.EARLY
    assert delete_verdict(None, TweetDeleted(100, 8, 2_000)) is Delete.EARLY
    placeholder = StoredTweet(100, None, None, None, deleted_at=5_000)
    assert delete_verdict(placeholder, TweetDeleted(100, 8, 2_000)) is Delete.EARLY


def test_reasons_name_the_id_and_say_what_is_wrong() -> None:
    reason = taken_reason(STORED, TweetPosted(100, 8, "spam", 1_000))
    assert "tweet_id 100" in reason and "already taken" in reason
    assert "author_id 7" in reason and "author_id, text" in reason and "created_at" not in reason
    reason = not_author_reason(STORED, TweetDeleted(100, 8, 2_000))
    assert "tweet_id 100" in reason and "author_id 8" in reason and "author is 7" in reason
    assert "only the author" in reason


def test_stored_tweet_of_a_driver_row() -> None:
    full = SimpleNamespace(tweet_id=1, author_id=2, text="t", created_at=3, deleted_at=0)
    assert StoredTweet.of_row(full) == StoredTweet(1, 2, "t", 3, None), "deleted_at 0 is not a delete"
    # a placeholder row (an older worker's early delete): absent columns read as None
    assert StoredTweet.of_row(SimpleNamespace(tweet_id=1, deleted_at=9)) == StoredTweet(1, None, None, None, 9)
