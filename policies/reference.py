"""The correctness reference: what every home timeline must show, from the log alone.

For each user: every live tweet (newest id first) of every account the user
follows *now*, where

* "follows now" is the last ``followed``/``unfollowed`` event of the pair in log
  order (follows are keyed by followee, so per-pair order is the log order);
  self-follows are ignored;
* a repeated ``tweet_posted`` id counts once (the first one in log order wins;
  across partitions the pipeline's "first" is the first one it claims, see
  ``policies/first_wins.py``, so a test with conflicting posts of one id by two
  authors must not depend on which wins);
* a tweet is live unless a ``tweet_deleted`` with its id *and its author* (the
  first post's) appears anywhere in the log, before or after the post; a delete
  naming anyone else is dead-lettered by the pipeline and hides nothing.

Celebrity status, activity, caps and floors are implementation strategies and
do not appear here: the reference is the full, unbounded answer a read must
agree with. Events are contract dicts (``schemas.events``) or typed events.
With ``validate=True`` dicts go through the contract decoder and events it
rejects are skipped, exactly as the agents send them to the dead-letter topic.
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Iterable

from schemas.events import (
    ContractError, TweetDeleted, TweetPosted, UserActive, UserFollowed, UserUnfollowed, from_dict,
)


class ReferenceModel:
    """Folds events one at a time; query at any point."""

    __slots__ = ("_follows", "_tweets", "_deleted", "_users", "_validate")

    def __init__(self, validate: bool = True) -> None:
        self._follows: dict[int, set[int]] = {}  # follower -> followees (current)
        self._tweets: dict[int, int] = {}  # tweet_id -> author_id
        self._deleted: set[tuple[int, int]] = set()  # (tweet_id, author_id) of every delete
        self._users: set[int] = set()
        self._validate = validate

    def apply(self, event: Any) -> bool:
        """Fold one event; False if it was skipped (contract violation or unknown type)."""
        if isinstance(event, dict):
            if self._validate:
                try:
                    event = from_dict(event)
                except ContractError:
                    return False
                kind, get = event.TYPE, event.__getattribute__
            else:
                kind, get = event.get("type"), event.__getitem__
        else:
            kind, get = getattr(event, "TYPE", None), event.__getattribute__
        if kind == TweetPosted.TYPE:
            tweet_id, author_id = get("tweet_id"), get("author_id")
            self._users.add(author_id)
            self._tweets.setdefault(tweet_id, author_id)
        elif kind == TweetDeleted.TYPE:
            self._users.add(get("author_id"))
            self._deleted.add((get("tweet_id"), get("author_id")))
        elif kind in (UserFollowed.TYPE, UserUnfollowed.TYPE):
            follower, followee = get("follower_id"), get("followee_id")
            if follower == followee:
                return False
            self._users.add(follower)
            self._users.add(followee)
            if kind == UserFollowed.TYPE:
                self._follows.setdefault(follower, set()).add(followee)
            else:
                self._follows.get(follower, set()).discard(followee)
        elif kind == UserActive.TYPE:
            self._users.add(get("user_id"))
        else:
            return False
        return True

    def users(self) -> set[int]:
        return set(self._users)

    def following(self, user_id: int) -> set[int]:
        return set(self._follows.get(user_id, ()))

    def _by_author(self) -> dict[int, list[int]]:
        by_author: dict[int, list[int]] = {}
        deleted = self._deleted
        for tweet_id, author_id in self._tweets.items():
            if (tweet_id, author_id) not in deleted:
                by_author.setdefault(author_id, []).append(tweet_id)
        return by_author

    @staticmethod
    def _timeline(followees: Iterable[int], by_author: dict[int, list[int]], limit: int | None) -> list[int]:
        ids = sorted(chain.from_iterable(by_author.get(a, ()) for a in followees), reverse=True)
        return ids if limit is None else ids[:limit]

    def home_timeline(self, user_id: int, limit: int | None = None) -> list[int]:
        followees = self._follows.get(user_id, set())
        deleted = self._deleted
        ids = sorted(
            (t for t, a in self._tweets.items() if a in followees and (t, a) not in deleted), reverse=True
        )
        return ids if limit is None else ids[:limit]

    def home_timelines(self) -> dict[int, list[int]]:
        by_author = self._by_author()
        return {
            user: self._timeline(self._follows.get(user, ()), by_author, None)
            for user in sorted(self._users)
        }


def _fold(events: Iterable[Any], validate: bool) -> ReferenceModel:
    model = ReferenceModel(validate)
    for event in events:
        model.apply(event)
    return model


def reference_home_timelines(events: Iterable[Any], *, validate: bool = True) -> dict[int, list[int]]:
    """user_id -> tweet ids newest first, for every user appearing in any (accepted) event."""
    return _fold(events, validate).home_timelines()


def reference_home_timeline(
    events: Iterable[Any], user_id: int, limit: int | None = None, *, validate: bool = True
) -> list[int]:
    """One user's reference timeline, newest first, at most ``limit`` ids."""
    return _fold(events, validate).home_timeline(user_id, limit)
