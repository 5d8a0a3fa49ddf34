"""Projects ``tweets`` and ``follows`` into PostgreSQL, the ACID, queryable store.

Idempotent: a tweet insert ignores a row that exists, a delete only sets
``deleted_at``, a follow is an upsert and an unfollow a delete, so replaying the
log (or a batch after a crash) leaves the same rows. Events that break the contract
are dead-lettered by the fanout stage, which reads the same topics; here they are
skipped. An event PostgreSQL refuses (a permanent error) is isolated and
dead-lettered here (stage ``projection``, ``agents/failures.py``); while PostgreSQL
is unreachable the batch waits.

The first post of a tweet id wins and only its author deletes it
(``policies/first_wins.py``), in PostgreSQL as in the timelines:

* The ``tweets`` table is where the fanout stage claims tweet ids (``TweetClaims``): a
  post is inserted only if its id has no row yet, by the projection as by the claim,
  so whichever of them stores an id first, both keep that post, and a post that lost
  its id changes nothing here.
* A delete only touches the row ``WHERE author_id`` is its own. One that comes
  before any post of its id is kept in ``tweet_early_deletes`` under (tweet,
  author), and only that author's post of the id picks it up (the claim's insert
  too): an early delete by anyone else never hides the tweet.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from psycopg_pool import AsyncConnectionPool

from agents.failures import Isolator
from agents.loop import consume
from agents.sinks import with_retry
from faust_app import app, runs, settings
from schemas import ContractError, Limits, decode
from sinks.postgres import open_pool, statements, write_batch
from streams.topics import EVENTS_ON, dead_letters_topic, projection_events

log = logging.getLogger(__name__)
BATCH_MAX = 1000
STAGE = "projection"
LIMITS = Limits.from_settings(settings)
ISOLATOR = Isolator(STAGE, settings.systemic_error_streak)


_pool: AsyncConnectionPool | None = None


async def get_pool() -> AsyncConnectionPool:
    global _pool
    if _pool is None:
        _pool = await open_pool(settings)
    return _pool


async def process_projection_batch(pool: AsyncConnectionPool, events: Sequence[Any]) -> None:
    typed = []
    for event in events:
        try:
            typed.append(decode(event.message.value, EVENTS_ON[event.message.topic], LIMITS))
        except ContractError:
            continue  # dead-lettered by the fanout stage
    stmts = statements(typed)
    if stmts:
        await with_retry("postgres projection", lambda: write_batch(pool, stmts, settings.postgres_timeout_s))


async def project_to_postgres(stream: Any) -> None:
    await consume(stream, ISOLATOR, get_pool, process_projection_batch,
                  batch_max=BATCH_MAX, pace_s=settings.projection_pace_ms / 1000,
                  dead_letters_topic=dead_letters_topic, partitions=settings.topic_partitions)


# A secondary region's PostgreSQL is a read-only replica of the primary's, which the
# primary region's worker projects into: the agent (and its consumer) exists only there,
# in the processes that run stage 1 (policies/worker_layout.py).
if not settings.secondary_region and runs("projection"):
    project_to_postgres = app.agent(projection_events, concurrency=1)(project_to_postgres)
