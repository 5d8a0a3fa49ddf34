"""Projects ``tweets`` and ``follows`` into PostgreSQL, the ACID, queryable store.

Idempotent: a tweet insert ignores a row that exists, a delete only sets
``deleted_at``, a follow is an upsert and an unfollow a delete, so replaying the
log (or a batch after a crash) leaves the same rows. Events that break the contract
are dead-lettered by the fanout stage, which reads the same topics; here they are
skipped. An event PostgreSQL refuses (a permanent error) is isolated and
dead-lettered here (stage ``projection``, ``agents/failures.py``); while PostgreSQL
is unreachable the batch waits.
"""
from __future__ import annotations

import logging
from itertools import groupby
from datetime import datetime, timezone
from typing import Any, Sequence

from psycopg_pool import AsyncConnectionPool

from agents.failures import Isolator, guard
from agents.metrics import BatchTimer
from agents.outbox import publish_dead_letter
from agents.sinks import with_retry
from faust_app import app, settings
from schemas import ALL_EVENTS, ContractError, Limits, TweetDeleted, TweetPosted, UserFollowed, UserUnfollowed, decode
from streams.topics import dead_letters_topic, projection_events

log = logging.getLogger(__name__)
BATCH_MAX = 1000
BATCH_WITHIN_S = 0.1
STAGE = "projection"
LIMITS = Limits.from_settings(settings)
ISOLATOR = Isolator(STAGE, settings.systemic_error_streak)

INSERT_TWEET = (
    "INSERT INTO tweets (tweet_id, author_id, text, created_at) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (tweet_id) DO NOTHING"
)
# A delete may arrive before its tweet: keep a placeholder row that the insert will not overwrite.
DELETE_TWEET = (
    "INSERT INTO tweets (tweet_id, author_id, text, created_at, deleted_at) VALUES (%s, %s, '', %s, %s) "
    "ON CONFLICT (tweet_id) DO UPDATE SET deleted_at = COALESCE(tweets.deleted_at, EXCLUDED.deleted_at)"
)
FOLLOW = (
    "INSERT INTO follows (follower_id, followee_id, created_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (follower_id, followee_id) DO NOTHING"
)
UNFOLLOW = "DELETE FROM follows WHERE follower_id = %s AND followee_id = %s"


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def statements(typed: Sequence[Any]) -> list[tuple[str, tuple]]:
    """SQL for a batch of events, in log order."""
    out: list[tuple[str, tuple]] = []
    for ev in typed:
        if isinstance(ev, TweetPosted):
            out.append((INSERT_TWEET, (ev.tweet_id, ev.author_id, ev.text, _ts(ev.created_at))))
        elif isinstance(ev, TweetDeleted):
            at = _ts(ev.deleted_at)
            out.append((DELETE_TWEET, (ev.tweet_id, ev.author_id, at, at)))
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
            typed.append(decode(event.message.value, ALL_EVENTS, LIMITS))
        except ContractError:
            continue  # dead-lettered by the fanout stage
    stmts = statements(typed)
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
