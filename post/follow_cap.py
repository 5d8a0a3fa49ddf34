"""The following cap (``TL_MAX_FOLLOWING``) in PostgreSQL, for the Post service.

Follows go to Kafka, not to a database, so the count lives in the PostgreSQL projection
of the log (``follows``, ``agents/projection.py`` / ``sinks/postgres.py``), which lags the log a little. The Post
service therefore also records every follow and unfollow it accepts in
``follow_intents`` (one row per pair: the last decision, when) and counts the
projection overridden by the intents of the last ``FOLLOW_INTENT_TTL_S``
(``policies.following``): a follow counts from the moment it is accepted, an unfollow
frees its slot at once, and a burst of follows cannot all pass a stale count.

A follow runs one short transaction: lock the follower's ``users`` row (``FOR UPDATE``:
one user's follows are checked one at a time, across every Post service process), count
(one statement: an index range of ``follows`` plus the user's recent intents), decide
(``follow_verdict``), and upsert the intent. The event is produced after the commit; if
Kafka refuses it before anything could be written, the intent is put back as it was. An
unfollow only upserts its intent. Intents older than the TTL are deleted by a sweep run at
most every ``SWEEP_EVERY_S`` per process (during a follow).

What is not exact is listed in ``policies.following``: all of it needs a projection more
than a day behind, another producer, or a race of one pair's follow and unfollow.
"""
from __future__ import annotations

import logging
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from policies.following import FOLLOW_INTENT_TTL_S, FollowVerdict, follow_verdict

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 600.0
SWEEP_BATCH = 10_000

# %(u)s follower, %(t)s followee, %(ttl)s seconds an intent overrides the projection.
COUNT_SQL = """
WITH recent AS MATERIALIZED (
  SELECT followee_id, following FROM follow_intents
  WHERE follower_id = %(u)s AND accepted_at > now() - make_interval(secs => %(ttl)s)
)
SELECT
  (SELECT count(*) FROM follows f WHERE f.follower_id = %(u)s
     AND NOT EXISTS (SELECT 1 FROM recent r WHERE r.followee_id = f.followee_id))
  + (SELECT count(*) FROM recent WHERE following) AS following_count,
  COALESCE((SELECT following FROM recent WHERE followee_id = %(t)s),
           EXISTS (SELECT 1 FROM follows WHERE follower_id = %(u)s AND followee_id = %(t)s)) AS follows_target
"""

# The new intent, and what the row was before (to put it back if Kafka refuses the event).
UPSERT_SQL = """
WITH old AS (
  SELECT following, accepted_at FROM follow_intents
  WHERE follower_id = %(u)s AND followee_id = %(t)s FOR UPDATE
), new AS (
  INSERT INTO follow_intents AS fi (follower_id, followee_id, following, accepted_at)
  VALUES (%(u)s, %(t)s, %(following)s, clock_timestamp())
  ON CONFLICT (follower_id, followee_id)
  DO UPDATE SET following = excluded.following, accepted_at = excluded.accepted_at
  RETURNING fi.accepted_at
)
SELECT (SELECT accepted_at FROM new), (SELECT following FROM old), (SELECT accepted_at FROM old)
"""

RESTORE_SQL = """
UPDATE follow_intents SET following = %(following)s, accepted_at = %(old_at)s
WHERE follower_id = %(u)s AND followee_id = %(t)s AND accepted_at = %(ours)s
"""
FORGET_SQL = "DELETE FROM follow_intents WHERE follower_id = %(u)s AND followee_id = %(t)s AND accepted_at = %(ours)s"

SWEEP_SQL = """
DELETE FROM follow_intents WHERE ctid = ANY(ARRAY(
  SELECT ctid FROM follow_intents WHERE accepted_at <= now() - make_interval(secs => %(ttl)s) LIMIT %(n)s))
"""


class FollowCapReached(Exception):
    def __init__(self, count: int, cap: int) -> None:
        super().__init__(f"{count} >= {cap}")
        self.count = count
        self.cap = cap


@dataclass(frozen=True)
class Intent:
    """A recorded decision, and how to take it back (``undo``) if its event never left."""

    follower: int
    followee: int
    accepted_at: datetime
    previous: tuple[bool, datetime] | None


class FollowCap:
    def __init__(self, pg_conn: Callable[[], AbstractAsyncContextManager[Any]], cap: int,
                 *, ttl_s: float = FOLLOW_INTENT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.pg_conn = pg_conn
        self.cap = cap
        self.ttl_s = ttl_s
        self.clock = clock
        self._next_sweep = 0.0

    async def count(self, follower: int, followee: int) -> tuple[int, bool]:
        """(accounts ``follower`` follows, whether ``followee`` is among them)."""
        async with self.pg_conn() as conn:
            return await self._count(conn, follower, followee)

    async def _count(self, conn: Any, follower: int, followee: int) -> tuple[int, bool]:
        cur = await conn.execute(COUNT_SQL, {"u": follower, "t": followee, "ttl": self.ttl_s})
        count, follows_target = await cur.fetchone()
        return int(count), bool(follows_target)

    async def follow(self, follower: int, followee: int) -> Intent:
        """Record a follow, or raise FollowCapReached. The caller then produces the event."""
        await self._maybe_sweep()
        async with self.pg_conn() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM users WHERE user_id = %s FOR UPDATE", (follower,))
            count, follows_target = await self._count(conn, follower, followee)
            if follow_verdict(count, follows_target, self.cap) is FollowVerdict.OVER_CAP:
                raise FollowCapReached(count, self.cap)
            return await self._upsert(conn, follower, followee, True)

    async def unfollow(self, follower: int, followee: int) -> Intent:
        async with self.pg_conn() as conn:
            return await self._upsert(conn, follower, followee, False)

    async def _upsert(self, conn: Any, follower: int, followee: int, following: bool) -> Intent:
        cur = await conn.execute(UPSERT_SQL, {"u": follower, "t": followee, "following": following})
        ours, old_following, old_at = await cur.fetchone()
        previous = None if old_at is None else (bool(old_following), old_at)
        return Intent(follower, followee, ours, previous)

    async def undo(self, intent: Intent) -> None:
        """Put the pair's intent back as it was, unless a later decision replaced ours."""
        params: dict[str, Any] = {"u": intent.follower, "t": intent.followee, "ours": intent.accepted_at}
        async with self.pg_conn() as conn:
            if intent.previous is None:
                await conn.execute(FORGET_SQL, params)
            else:
                following, old_at = intent.previous
                await conn.execute(RESTORE_SQL, {**params, "following": following, "old_at": old_at})

    async def _maybe_sweep(self) -> None:
        now = self.clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        async with self.pg_conn() as conn:
            cur = await conn.execute(SWEEP_SQL, {"ttl": self.ttl_s, "n": SWEEP_BATCH})
            if cur.rowcount:
                log.info("deleted %d follow intents older than %.0f s", cur.rowcount, self.ttl_s)
