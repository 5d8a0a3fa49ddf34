"""A tweet id belongs to its first post; only that post's author can delete it.

docs/events.md promises that a repeated ``tweet_posted`` id counts once and the
first one wins, and any Kafka client can be a producer: a later post of the same
id with another text, author or time must not change anything, and a
``tweet_deleted`` naming someone else as the author must not hide the tweet.

Which post is "first" is decided globally by PostgreSQL, the tweets' source of
truth: the fanout stage claims a batch's ids there (``sinks.postgres.TweetClaims``,
the first row of an id wins, whichever worker or the projection inserts it), then
writes the winners' bodies to Cassandra; :func:`settle` says which row an id has,
and these pure functions compare an event with it.

* :func:`post_verdict`: the same tweet again (a replay after a crash, a producer
  retry: processed as usual, every write is idempotent), a conflicting one
  (dead-lettered, not stored, cached or fanned out).
* :func:`delete_verdict`: by the tweet's author (applied), by anyone else
  (dead-lettered), or before any post of the id was stored ("early": kept aside,
  keyed by author and tweet, and applied only when *that author's* post of the
  id arrives, so an early delete by the wrong author can never hide the tweet).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True, slots=True)
class StoredTweet:
    """A row of the tweets table: the winning post (``author_id`` None: a placeholder row)."""

    tweet_id: int
    author_id: int | None
    text: str | None
    created_at: int | None
    deleted_at: int | None = None

    @classmethod
    def of_post(cls, ev: Any, deleted_at: int | None = None) -> "StoredTweet":
        return cls(ev.tweet_id, ev.author_id, ev.text, ev.created_at, deleted_at)

    @classmethod
    def of_row(cls, row: Any) -> "StoredTweet":
        """From a driver row (named tuple with the table's columns; absent columns are None)."""
        return cls(
            row.tweet_id,
            getattr(row, "author_id", None),
            getattr(row, "text", None),
            getattr(row, "created_at", None),
            getattr(row, "deleted_at", None) or None,  # 0 or null: not deleted
        )

    @property
    def placeholder(self) -> bool:
        return self.author_id is None


class Post(enum.Enum):
    SAME = "same"  # the stored tweet is this one: proceed (idempotent)
    CONFLICT = "conflict"  # the id is taken by another tweet: dead-letter


class Delete(enum.Enum):
    APPLY = "apply"  # by the tweet's author
    NOT_AUTHOR = "not_author"  # dead-letter
    EARLY = "early"  # no tweet stored yet: keep aside for this author's post


def same_tweet(stored: StoredTweet, ev: Any) -> bool:
    """True when ``ev`` (a TweetPosted) is the stored tweet: same author, text and time."""
    return (
        stored.author_id == ev.author_id
        and stored.text == ev.text
        and stored.created_at == ev.created_at
    )


def settle(claimed: Mapping[int, StoredTweet], rows: Mapping[int, StoredTweet]) -> dict[int, StoredTweet]:
    """The row each id has: ``claimed`` (PostgreSQL's winners of the posted ids) with
    ``rows`` (Cassandra's rows of the posted and deleted ids: bodies and delete marks).

    A posted id's winner is Cassandra's row when that row has an author (written only
    for a winner: the claim's, or an LWT's before claims moved to PostgreSQL), else
    PostgreSQL's, keeping the delete mark of a placeholder row (an older worker's
    early delete). Ids only deleted keep Cassandra's row (none: no post stored yet).
    """
    out = dict(rows)
    for tweet_id, winner in claimed.items():
        row = rows.get(tweet_id)
        if row is None:
            out[tweet_id] = winner
        elif row.placeholder:
            out[tweet_id] = StoredTweet(tweet_id, winner.author_id, winner.text, winner.created_at, row.deleted_at)
    return out


def post_verdict(stored: StoredTweet, ev: Any) -> Post:
    """What to do with post ``ev`` given the row its id has after the claim (``settle``)."""
    return Post.SAME if same_tweet(stored, ev) else Post.CONFLICT


def delete_verdict(stored: StoredTweet | None, ev: Any) -> Delete:
    """What to do with delete ``ev`` given the stored row of its id (None: no row)."""
    if stored is None or stored.placeholder:
        return Delete.EARLY
    return Delete.APPLY if stored.author_id == ev.author_id else Delete.NOT_AUTHOR


def taken_reason(stored: StoredTweet, ev: Any) -> str:
    """The dead-letter reason of a conflicting post."""
    differs = [
        name
        for name, mine, theirs in (
            ("author_id", ev.author_id, stored.author_id),
            ("text", ev.text, stored.text),
            ("created_at", ev.created_at, stored.created_at),
        )
        if mine != theirs
    ]
    return (
        f"tweet_id {ev.tweet_id} is already taken by an earlier tweet_posted "
        f"(author_id {stored.author_id}); this one differs in {', '.join(differs)}: the first post of an id wins"
    )


def not_author_reason(stored: StoredTweet, ev: Any) -> str:
    """The dead-letter reason of a delete by someone other than the tweet's author."""
    return (
        f"tweet_deleted of tweet_id {ev.tweet_id} names author_id {ev.author_id}, "
        f"but the tweet's author is {stored.author_id}: only the author can delete a tweet"
    )

