"""PostgreSQL, the tweets' source of truth: the claims of tweet ids and the projection's writes.

``TweetClaims``: the fanout stage claims a batch's tweet ids in the ``tweets`` table (the
first row of an id wins, ``policies/first_wins.py``), one statement for the batch.
``statements`` maps a batch of typed events to the projection's SQL in log order; the
projection's insert of a post is the same first-row-wins insert, so PostgreSQL and the
fanout stage agree on every id whichever of them stores it first. Every statement is
idempotent (see ``agents/projection.py``), and ``write_batch`` runs a batch in one
transaction.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from itertools import groupby
from typing import Any, Sequence

import psycopg
from psycopg_pool import AsyncConnectionPool

from policies.first_wins import StoredTweet
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
# The claim of a batch's tweet ids: the same first-row-wins insert as INSERT_TWEET, for a
# whole batch in one statement (arrays, one row each). An insert that meets a row another
# transaction has not committed yet waits for it, so the read that follows (a statement of
# its own, READ COMMITTED) sees every id's winner.
CLAIM_TWEETS = (
    "INSERT INTO tweets (tweet_id, author_id, text, created_at, deleted_at) "
    "SELECT c.tweet_id, c.author_id, c.text, c.created_at, (SELECT e.deleted_at FROM tweet_early_deletes e "
    "WHERE e.tweet_id = c.tweet_id AND e.author_id = c.author_id) "
    "FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::timestamptz[]) AS c(tweet_id, author_id, text, created_at) "
    "ON CONFLICT (tweet_id) DO NOTHING"
)
READ_CLAIMS = "SELECT tweet_id, author_id, text, created_at FROM tweets WHERE tweet_id = ANY(%s)"
FOLLOW = (
    "INSERT INTO follows (follower_id, followee_id, created_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (follower_id, followee_id) DO NOTHING"
)
UNFOLLOW = "DELETE FROM follows WHERE follower_id = %s AND followee_id = %s"


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _ts(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def _ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


class TweetClaims:
    """The claims of tweet ids in PostgreSQL's ``tweets`` table, over one autocommit connection
    of their own (on the primary region's server: ``Settings.postgres_write_dsn``).

    The fanout stage claims one batch at a time, so one connection is enough; it is opened
    on first use and again after an error, so a PostgreSQL that went away costs the
    caller's retry loop a refused connection per attempt (a pool would hold each attempt
    for its ``timeout`` and reconnect on its own, growing back-off) and the claims go on as
    soon as the server answers again.
    """

    CONNECT_TIMEOUT_S = 5

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.settings.postgres_write_dsn, autocommit=True, connect_timeout=self.CONNECT_TIMEOUT_S,
                **self.settings.postgres_kwargs())
        return self._conn

    async def claim(self, posts: Sequence[tuple[int, int, str, int]]) -> dict[int, StoredTweet]:
        """Claim each tweet id for its post (tweet_id, author_id, text, created_at ms); each id's winner.

        Of all the posts of one id, by whichever worker (or the projection, which inserts
        the same way), the first row PostgreSQL commits is kept, and every caller gets that
        row back (without ``deleted_at``: the fanout stage's delete marks are Cassandra's).
        The insert and the read are statements of their own (autocommit), so the read sees
        the rows that concurrent claims committed while the insert waited for them.
        Replaying a claim changes nothing. The ids must be distinct; they are inserted in
        ascending order, so two claims that meet on several ids wait for each other in one
        order and never deadlock.
        """
        if not posts:
            return {}
        posts = sorted(posts)
        ids = [p[0] for p in posts]
        async with self._lock:
            try:
                rows = await asyncio.wait_for(self._claim(posts, ids), self.settings.postgres_timeout_s)
            except BaseException:
                # Gone, stuck (the wait above ran out), interrupted mid-statement or refused: the
                # connection's state is unknown, so the next claim opens a new one.
                await self.close()
                raise
        out = {r[0]: StoredTweet(r[0], r[1], r[2], _ms(r[3])) for r in rows}
        missing = [i for i in ids if i not in out]
        if missing:  # only if something removed rows of the tweets table meanwhile
            raise RuntimeError(f"tweet ids {missing[:5]} have no row in PostgreSQL right after their claim")
        return out

    async def _claim(self, posts: Sequence[tuple[int, int, str, int]], ids: list[int]) -> list[tuple]:
        conn = await self._connection()
        await conn.execute(CLAIM_TWEETS, (ids, [p[1] for p in posts], [p[2] for p in posts],
                                          [_ts(p[3]) for p in posts]))
        return await (await conn.execute(READ_CLAIMS, (ids,))).fetchall()


def statements(typed: Sequence[Any]) -> list[tuple[str, tuple]]:
    """The projection's SQL for a batch of events, in log order.

    A post is inserted only if its id has no row yet (the fanout stage's claim or an
    earlier post: the first row wins), a delete marks the row only if it names the row's
    author (``DELETE_TWEET``): posts that lost their id and deletes by someone else than
    the author change nothing (the fanout stage dead-letters them).
    """
    out: list[tuple[str, tuple]] = []
    for ev in typed:
        if isinstance(ev, TweetPosted):
            out.append((INSERT_TWEET, (ev.tweet_id, ev.author_id, ev.text, _ts(ev.created_at),
                                       ev.tweet_id, ev.author_id)))
        elif isinstance(ev, TweetDeleted):
            at = _ts(ev.deleted_at)
            out.append((DELETE_TWEET, (at, ev.tweet_id, ev.author_id, ev.tweet_id, ev.author_id, at, ev.tweet_id)))
        elif isinstance(ev, UserFollowed):
            out.append((FOLLOW, (ev.follower_id, ev.followee_id, _ts(ev.at))))
        elif isinstance(ev, UserUnfollowed):
            out.append((UNFOLLOW, (ev.follower_id, ev.followee_id)))
    return out


async def write_batch(pool: AsyncConnectionPool, stmts: Sequence[tuple[str, tuple]], timeout_s: float) -> None:
    """One transaction; consecutive statements of the same kind go in one ``executemany``.
    Given up after ``timeout_s`` (``TimeoutError``, transient: the caller retries; the pool
    drops the connection, whose statement was interrupted)."""
    async def write() -> None:
        async with pool.connection() as conn:
            async with conn.transaction():
                async with conn.cursor() as cur:
                    for sql, run in groupby(stmts, key=lambda s: s[0]):
                        await cur.executemany(sql, [params for _, params in run])

    await asyncio.wait_for(write(), timeout_s)


async def open_pool(settings: Settings, max_size: int = 4) -> AsyncConnectionPool:
    """A pool on the namespace's schema (``settings.postgres_kwargs()``). A caller waits at most
    5 s for a connection (the default is 30): while PostgreSQL is down, its retry loop and
    the health check hear of it every few seconds."""
    pool = AsyncConnectionPool(settings.postgres_dsn, min_size=1, max_size=max_size, open=False, timeout=5.0,
                               kwargs=settings.postgres_kwargs())
    await pool.open()
    return pool
