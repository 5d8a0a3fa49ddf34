"""The PostgreSQL projection's store: its SQL, its connection pool, its writes.

``statements`` maps a batch of typed events to SQL in log order, following the fanout
stage's first-post-wins verdicts (``policies/first_wins.py``): a post that is not the
stored tweet and a delete by someone other than its author are left out. Every
statement is idempotent (see ``agents/projection.py``), and ``write_batch`` runs a
batch in one transaction.
"""
from __future__ import annotations

from datetime import datetime, timezone
from itertools import groupby
from typing import Any, Mapping, Sequence

from psycopg_pool import AsyncConnectionPool

from policies.first_wins import Delete, Post, StoredTweet, delete_verdict, post_verdict
from schemas import TweetDeleted, TweetPosted, UserFollowed, UserUnfollowed
from settings import Settings

# The author's early delete (if any) comes along with the first post of the id.
INSERT_TWEET = (
    "INSERT INTO tweets (tweet_id, author_id, text, created_at, deleted_at) VALUES (%s, %s, %s, %s, "
    "(SELECT deleted_at FROM tweet_early_deletes WHERE tweet_id = %s AND author_id = %s)) "
    "ON CONFLICT (tweet_id) DO NOTHING"
)
# Marks the row only if this is its author's; with no row yet, keeps the delete aside for
# the author's post (the first deleted_at wins, so a replay changes nothing).
DELETE_TWEET = (
    "WITH own AS (UPDATE tweets SET deleted_at = COALESCE(tweets.deleted_at, %s) "
    "WHERE tweet_id = %s AND author_id = %s) "
    "INSERT INTO tweet_early_deletes (tweet_id, author_id, deleted_at) "
    "SELECT %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM tweets WHERE tweet_id = %s) "
    "ON CONFLICT (tweet_id, author_id) DO NOTHING"
)
FOLLOW = (
    "INSERT INTO follows (follower_id, followee_id, created_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (follower_id, followee_id) DO NOTHING"
)
UNFOLLOW = "DELETE FROM follows WHERE follower_id = %s AND followee_id = %s"


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def statements(typed: Sequence[Any], stored: Mapping[int, StoredTweet] | None = None) -> list[tuple[str, tuple]]:
    """SQL for a batch of events, in log order.

    ``stored``: the tweets rows the fanout stage claimed (Cassandra), by id. A post
    that is not the stored tweet and a delete by someone else than its author are
    left out (the fanout stage dead-letters them).
    """
    stored = stored or {}
    out: list[tuple[str, tuple]] = []
    for ev in typed:
        if isinstance(ev, TweetPosted):
            row = stored.get(ev.tweet_id)
            if row is not None and post_verdict(row, ev) is Post.CONFLICT:
                continue
            out.append((INSERT_TWEET, (ev.tweet_id, ev.author_id, ev.text, _ts(ev.created_at),
                                       ev.tweet_id, ev.author_id)))
        elif isinstance(ev, TweetDeleted):
            if delete_verdict(stored.get(ev.tweet_id), ev) is Delete.NOT_AUTHOR:
                continue
            at = _ts(ev.deleted_at)
            out.append((DELETE_TWEET, (at, ev.tweet_id, ev.author_id, ev.tweet_id, ev.author_id, at, ev.tweet_id)))
        elif isinstance(ev, UserFollowed):
            out.append((FOLLOW, (ev.follower_id, ev.followee_id, _ts(ev.at))))
        elif isinstance(ev, UserUnfollowed):
            out.append((UNFOLLOW, (ev.follower_id, ev.followee_id)))
    return out


async def write_batch(pool: AsyncConnectionPool, stmts: Sequence[tuple[str, tuple]]) -> None:
    """One transaction; consecutive statements of the same kind go in one ``executemany``."""
    async with pool.connection() as conn:
        async with conn.transaction():
            async with conn.cursor() as cur:
                for sql, run in groupby(stmts, key=lambda s: s[0]):
                    await cur.executemany(sql, [params for _, params in run])


async def open_pool(settings: Settings, max_size: int = 4) -> AsyncConnectionPool:
    """A pool on the namespace's schema (``settings.postgres_kwargs()``)."""
    pool = AsyncConnectionPool(settings.postgres_dsn, min_size=1, max_size=max_size, open=False,
                               kwargs=settings.postgres_kwargs())
    await pool.open()
    return pool
