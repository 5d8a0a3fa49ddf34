"""Whether a user counts as active, for skipping fanout to dormant timelines.

The decision is event-time based: ``now_ms`` is the ``created_at`` of the tweet
being fanned out, never the wall clock, so a replay of the log decides exactly
as the first run did.

A user we have no activity record for (``last_active_ms is None``) is treated
as *active*: tweets and follows may come from producers outside our Post
service that emit no ``user_active`` events, and skipping such users would
silently hide tweets from their timelines. Skipping is only an optimisation;
delivering to an idle user costs a little storage, never correctness.
"""
from __future__ import annotations

DEFAULT_INACTIVE_AFTER_MS = 30 * 24 * 3600 * 1000


def is_active(
    last_active_ms: int | None,
    now_ms: int,
    inactive_after_ms: int = DEFAULT_INACTIVE_AFTER_MS,
) -> bool:
    """True unless the user was last seen more than ``inactive_after_ms`` before ``now_ms``.

    Exactly ``inactive_after_ms`` of silence is still active; activity later
    than ``now_ms`` (possible in event time) is active.
    """
    if inactive_after_ms < 0:
        raise ValueError(f"inactive_after_ms must be >= 0, got {inactive_after_ms}")
    if last_active_ms is None:
        return True
    return now_ms - last_active_ms <= inactive_after_ms
