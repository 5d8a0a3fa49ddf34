"""The fanout planner: which delivery messages one tweet (or delete) produces.

A tweet by a non-celebrity is pushed to every follower's materialized timeline.
Followers are grouped by the partition that owns their timeline (``partition_for``
is injected; in production ``partitioning.partition_for_id(user_id, n)``), and each
group is cut into batches of at most ``batch_size`` recipients. Celebrities'
tweets are not pushed: reads pull them.

Output is deterministic: partitions ascending, recipients ascending within a
partition, so a replay produces identical messages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, NamedTuple, Protocol, Sequence

Op = Literal["add", "remove"]
DEFAULT_BATCH_SIZE = 500


class TweetLike(Protocol):
    @property
    def tweet_id(self) -> int: ...

    @property
    def author_id(self) -> int: ...


class TweetRef(NamedTuple):
    tweet_id: int
    author_id: int


@dataclass(frozen=True, slots=True)
class DeliveryBatch:
    """Add (or remove) one tweet to (from) the timelines of ``recipients``, all on ``partition``."""

    partition: int
    recipients: tuple[int, ...]
    tweet_id: int
    author_id: int
    op: Op = "add"


def is_pulled(celebrity: bool, since: int, tweet_id: int) -> bool:
    """Whether a tweet is pulled at read time instead of pushed: a celebrity's tweets after
    ``since`` (the last one pushed before the promotion). Ids at or below ``since`` were
    pushed, and a replayed batch (the author already promoted) must push them again, as
    its deliveries may be lost. The same rule decides whether a delete must be pushed."""
    return celebrity and tweet_id > since


Groups = Sequence[tuple[int, tuple[int, ...]]]  # (partition, recipients): plan_recipients' answer


def plan_recipients(
    followers: Iterable[int],
    author_id: int,
    partition_for: Callable[[int], int],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[tuple[int, tuple[int, ...]]]:
    """``(partition, recipients)`` groups of an author's followers (the author left out),
    partitions ascending, recipients ascending, at most ``batch_size`` per group."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    recipients = set(followers)
    recipients.discard(author_id)  # an author never receives their own tweet
    groups: dict[int, list[int]] = {}
    for user_id in recipients:
        partition = partition_for(user_id)
        group = groups.get(partition)
        if group is None:
            groups[partition] = [user_id]
        else:
            group.append(user_id)
    out: list[tuple[int, tuple[int, ...]]] = []
    for partition in sorted(groups):
        if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
            raise ValueError(f"partition_for returned {partition!r}, expected an int >= 0")
        members = sorted(groups[partition])
        for start in range(0, len(members), batch_size):
            out.append((partition, tuple(members[start : start + batch_size])))
    return out


def _plan(tweet: TweetLike, groups: Groups, op: Op) -> list[DeliveryBatch]:
    return [DeliveryBatch(partition, recipients, tweet.tweet_id, tweet.author_id, op) for partition, recipients in groups]


def plan_fanout(tweet: TweetLike, groups: Groups, pulled: bool) -> list[DeliveryBatch]:
    """Batches (op="add") delivering ``tweet`` to its author's followers, ``groups`` being
    ``plan_recipients`` of them (the fanout agent keeps an author's groups between tweets,
    ``tables/follower_plans.py``); [] for a tweet that is pulled at read time (``is_pulled``:
    a celebrity's)."""
    if pulled:
        return []
    return _plan(tweet, groups, "add")


def plan_removal(tweet: TweetLike, groups: Groups) -> list[DeliveryBatch]:
    """Batches (op="remove") taking a deleted tweet out of followers' timelines (``groups``:
    ``plan_recipients`` of the author's followers).

    Not skipped for celebrities: the author's status may have changed since the
    tweet was pushed, and removing an absent entry is a no-op. (Reads must still
    drop deleted tweets when hydrating, for timelines this cannot reach, e.g.
    users who unfollowed in between.)
    """
    return _plan(tweet, groups, "remove")


def group_by_partition(deliveries: Iterable[DeliveryBatch]) -> dict[int, list[DeliveryBatch]]:
    """Coalesce batches from many tweets into one list per destination partition.

    Keys are ascending; within a partition the input order is kept, so an add
    followed by a remove of the same tweet stays in that order.
    """
    grouped: dict[int, list[DeliveryBatch]] = {}
    for batch in deliveries:
        group = grouped.get(batch.partition)
        if group is None:
            grouped[batch.partition] = [batch]
        else:
            group.append(batch)
    return {partition: grouped[partition] for partition in sorted(grouped)}
