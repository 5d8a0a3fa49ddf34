"""Projects ``tweets`` and ``follows`` into PostgreSQL, the ACID, queryable store.

Idempotent: a tweet insert ignores a row that exists, a delete only sets
``deleted_at``, a follow is an upsert and an unfollow a delete, so replaying the
log (or a batch after a crash) leaves the same rows. Events that break the contract
are dead-lettered by the fanout stage, which reads the same topics; here they are
skipped. An event PostgreSQL refuses (a permanent error) is isolated and
dead-lettered here (stage ``projection``, ``agents/failures.py``); while PostgreSQL
is unreachable the batch waits.

The first post of a tweet id wins and only its author deletes it
(``policies/first_wins.py``), with the fanout stage's verdicts:

* The fanout stage decides which post of an id is first (a Cassandra lightweight
  transaction). Before writing a batch, the projection reads the Cassandra rows
  of its tweet ids (one query per 100 ids) and skips a post that differs from the
  stored one and a delete by someone other than its author. ``ON CONFLICT DO
  NOTHING`` keeps the first row PostgreSQL got in any case.
* A delete only touches the row ``WHERE author_id`` is its own. One that comes
  before any post of its id is kept in ``tweet_early_deletes`` under (tweet,
  author), and only that author's post of the id picks it up: an early delete
  by anyone else never hides the tweet.

The one race left: two conflicting posts of one id on two partitions, with the
projection writing one of them before the fanout stage has claimed either. The
projection then keeps the post it saw first, and the fanout stage may claim the
other: PostgreSQL and Cassandra disagree about that id (and a delete by
Cassandra's author does not apply in PostgreSQL). It needs a producer reusing
another author's id within the projection's lead over the fanout (typically
well under a second); the dead letter of the losing post names the id.
"""
from __future__ import annotations

import logging
from itertools import groupby
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from psycopg_pool import AsyncConnectionPool

from agents.failures import Isolator, guard
from agents.metrics import BatchTimer
from agents.outbox import publish_dead_letter
from agents.sinks import get_sinks, with_retry
from faust_app import app, settings
from policies.first_wins import Delete, Post, StoredTweet, delete_verdict, post_verdict
from schemas import ContractError, Limits, TweetDeleted, TweetPosted, UserFollowed, UserUnfollowed, decode
from streams.topics import EVENTS_ON, dead_letters_topic, projection_events

log = logging.getLogger(__name__)
BATCH_MAX = 1000
BATCH_WITHIN_S = 0.1
STAGE = "projection"
LIMITS = Limits.from_settings(settings)
ISOLATOR = Isolator(STAGE, settings.systemic_error_streak)

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


async def claimed_tweets(typed: Sequence[Any]) -> dict[int, StoredTweet]:
    """The Cassandra rows (the fanout stage's verdicts) of the batch's tweet ids."""
    ids = {ev.tweet_id for ev in typed if isinstance(ev, (TweetPosted, TweetDeleted))}
    if not ids:
        return {}
    sinks = await get_sinks(settings)
    return await with_retry("projection reads claims", lambda: sinks.cassandra.read_tweets(ids))


async def write_batch(pool: AsyncConnectionPool, stmts: Sequence[tuple[str, tuple]]) -> None:
    """One transaction; consecutive statements of the same kind go in one ``executemany``."""
    async with pool.connection() as conn:
        async with conn.transaction():
            async with conn.cursor() as cur:
                for sql, run in groupby(stmts, key=lambda s: s[0]):
                    await cur.executemany(sql, [params for _, params in run])


_pool: AsyncConnectionPool | None = None


async def get_pool() -> AsyncConnectionPool:
    global _pool
    if _pool is None:
        _pool = AsyncConnectionPool(settings.postgres_dsn, min_size=1, max_size=4, open=False,
                                    kwargs=settings.postgres_kwargs())
        await _pool.open()
    return _pool


async def process_projection_batch(pool: AsyncConnectionPool, events: Sequence[Any]) -> None:
    typed = []
    for event in events:
        try:
            typed.append(decode(event.message.value, EVENTS_ON[event.message.topic], LIMITS))
        except ContractError:
            continue  # dead-lettered by the fanout stage
    stmts = statements(typed, await claimed_tweets(typed))
    if stmts:
        await with_retry("postgres projection", lambda: write_batch(pool, stmts))


@app.agent(projection_events, concurrency=1)
async def project_to_postgres(stream: Any) -> None:
    async with guard(STAGE):
        pool = await get_pool()

        async def dead_letter(event: Any, reason: str) -> None:
            await publish_dead_letter(dead_letters_topic, event, reason, STAGE, settings.topic_partitions)

        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            with BatchTimer(STAGE, len(events)):
                await ISOLATOR.run(events, lambda part: process_projection_batch(pool, part), dead_letter)
