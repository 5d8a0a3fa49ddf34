"""The cap on how many accounts a user follows (``TL_MAX_FOLLOWING``), as pure decisions.

What a user follows, as the Post service sees it, is the PostgreSQL projection of the
``follows`` topic (table ``follows``, written by ``agents/projection.py``) overridden by
the service's own recent decisions (table ``follow_intents``: the last follow or unfollow
it accepted per pair, for ``FOLLOW_INTENT_TTL_S``). The projection lags the log by the
projection's consumer lag (normally well under a second), so without the intents a burst
of follows could all pass a cap checked against a stale count; with them, every follow the
service accepted counts at once, and an unfollow frees its slot at once.

:func:`effective_following` is the definition; ``post.follow_cap`` computes the same thing
in one SQL statement (and an integration test checks the two agree). The count is exact
except: a follow or unfollow accepted more than ``FOLLOW_INTENT_TTL_S`` ago that the
projection still has not applied (its lag is over a day); follows produced to the log by
other producers than the Post service, counted once projected; and one pair's follow and
unfollow racing each other (the intent may say the opposite of the log's last event for
that pair until the next follow or unfollow of it, or the TTL).
"""
from __future__ import annotations

from enum import Enum
from typing import Iterable, Mapping

# How long the Post service's own record of a follow or unfollow overrides the projection.
FOLLOW_INTENT_TTL_S = 24 * 3600


class FollowVerdict(Enum):
    NEW = "new"              # not followed yet and under the cap: accept
    ALREADY = "already"      # already followed: accept (the event is harmless), no new slot used
    OVER_CAP = "over_cap"    # not followed yet and the cap is reached: refuse


def effective_following(projected: Iterable[int], intents: Mapping[int, bool]) -> set[int]:
    """Followees: the projection's, with each recent intent (followee -> following?) applied."""
    out = {f for f in projected if f not in intents}
    out.update(f for f, following in intents.items() if following)
    return out


def follow_verdict(count: int, follows_target: bool, cap: int) -> FollowVerdict:
    """May a user who follows ``count`` accounts (``follows_target``: among them the target)
    follow the target, with at most ``cap`` accounts followed?"""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    if follows_target:
        return FollowVerdict.ALREADY
    if count >= cap:
        return FollowVerdict.OVER_CAP
    return FollowVerdict.NEW


def over_cap_detail(count: int, cap: int) -> str:
    """What the 409 answer says: a person can act on it."""
    return (f"you already follow {count} accounts, the most allowed is {cap}; "
            f"unfollow an account before following another")
