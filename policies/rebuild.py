"""Rebuilding a home timeline from the followees' author timelines (pure).

Used when an inactive user comes back (their deliveries were skipped) and when
an operator rebuilds projections. Input: for each followee, their newest tweet
ids (descending) and whether older ones were left out. Output: the newest
``cap`` entries and the floor below which the result is not complete.
"""
from __future__ import annotations

import heapq
from typing import Mapping, NamedTuple, Sequence


class AuthorTweets(NamedTuple):
    ids_desc: Sequence[int]
    truncated: bool  # the author has older tweets than these


class Rebuilt(NamedTuple):
    entries: list[tuple[int, int]]  # (tweet_id, author_id), newest first
    floor: int


def plan_rebuild(by_author: Mapping[int, AuthorTweets], cap: int, floor: int = 0) -> Rebuilt:
    """The newest ``cap`` entries of the merged author timelines, and a floor that keeps them complete.

    Every followee tweet with an id above the returned floor is in the entries:
    an author whose list was cut raises the floor to just below its oldest
    listed id, and cutting the merged list at ``cap`` raises it to just below the
    oldest kept entry.
    """
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    for author_id, tweets in by_author.items():
        if tweets.truncated and tweets.ids_desc:
            floor = max(floor, min(tweets.ids_desc) - 1)
    streams = [
        [(t, a) for t in tweets.ids_desc] for a, tweets in by_author.items()
    ]
    merged: list[tuple[int, int]] = []
    seen: set[int] = set()
    for tweet_id, author_id in heapq.merge(*streams, key=lambda e: e[0], reverse=True):
        if tweet_id <= floor or tweet_id in seen:
            continue
        if len(merged) == cap:
            floor = max(floor, merged[-1][0] - 1)
            break
        seen.add(tweet_id)
        merged.append((tweet_id, author_id))
    return Rebuilt([e for e in merged if e[0] > floor], floor)
