"""The PostgreSQL projection (``agents.projection``, ``sinks.postgres``): ``statements()`` and the agent
run through ``agent.test_context()`` with a recording stand-in for the connection pool."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import pytest

import agents.projection as projection_mod
from sinks.postgres import CLAIM_TWEETS, DELETE_TWEET, FOLLOW, INSERT_TWEET, UNFOLLOW, statements, write_batch
from faust_app import settings
from schemas import TweetDeleted, TweetPosted, UserActive, UserFollowed, UserUnfollowed
from tests.unit.agent_doubles import Msg, msg_for, one_batch, put_messages, wait_for_batch

MS = 1_700_000_000_123
AT = datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=timezone.utc)


def test_each_event_maps_to_its_statement_in_log_order() -> None:
    events = [
        TweetPosted(10, 1, "héllo", MS),
        UserFollowed(2, 1, MS),
        TweetDeleted(10, 1, MS),
        UserUnfollowed(2, 1, MS + 1),
    ]
    assert statements(events) == [
        (INSERT_TWEET, (10, 1, "héllo", AT, 10, 1)),
        (FOLLOW, (2, 1, AT)),
        (DELETE_TWEET, (AT, 10, 1, 10, 1, AT, 10)),
        (UNFOLLOW, (2, 1)),
    ]


def test_activity_and_empty_batches_produce_nothing() -> None:
    assert statements([]) == []
    assert statements([UserActive(5, MS)]) == []


def test_timestamps_are_utc_with_milliseconds() -> None:
    [(_, params)] = statements([TweetPosted(1, 2, "x", 0)])
    assert params[3] == datetime(1970, 1, 1, tzinfo=timezone.utc)
    [(_, params)] = statements([TweetDeleted(1, 2, MS)])
    assert params[0].tzinfo is timezone.utc and params[0].microsecond == 123000


@pytest.mark.parametrize("sql", [INSERT_TWEET, DELETE_TWEET, FOLLOW, UNFOLLOW], ids=["insert", "delete", "follow", "unfollow"])
def test_placeholders_match_the_parameters(sql: str) -> None:
    events = {
        INSERT_TWEET: TweetPosted(1, 2, "x", MS),
        DELETE_TWEET: TweetDeleted(1, 2, MS),
        FOLLOW: UserFollowed(3, 2, MS),
        UNFOLLOW: UserUnfollowed(3, 2, MS),
    }
    [(got, params)] = statements([events[sql]])
    assert got == sql and sql.count("%s") == len(params)


def test_the_projection_inserts_like_the_fanout_stage_claims() -> None:
    """The claim (``CLAIM_TWEETS``) and the projection's insert keep the same first row of an
    id, with the author's early delete: whichever runs first, both keep that post."""
    for sql in (INSERT_TWEET, CLAIM_TWEETS):
        assert "INSERT INTO tweets (tweet_id, author_id, text, created_at, deleted_at)" in sql
        assert "ON CONFLICT (tweet_id) DO NOTHING" in sql
    assert "FROM tweet_early_deletes e WHERE e.tweet_id = c.tweet_id AND e.author_id = c.author_id" in CLAIM_TWEETS


def test_statements_are_replay_safe() -> None:
    """What makes a replayed batch leave the same rows (the SQL itself runs in integration tests)."""
    assert "ON CONFLICT (tweet_id) DO NOTHING" in INSERT_TWEET
    # a delete marks only its author's row, and the first deleted_at wins over a replayed delete;
    # a delete before its tweet is kept aside per (tweet, author), once
    assert "SET deleted_at = COALESCE(tweets.deleted_at, %s) WHERE tweet_id = %s AND author_id = %s" in DELETE_TWEET
    assert "ON CONFLICT (tweet_id, author_id) DO NOTHING" in DELETE_TWEET
    assert "FROM tweet_early_deletes WHERE tweet_id = %s AND author_id = %s" in INSERT_TWEET
    assert "ON CONFLICT (follower_id, followee_id) DO NOTHING" in FOLLOW
    assert UNFOLLOW.startswith("DELETE FROM follows WHERE")


# --- write_batch and the agent ----------------------------------------------------------


class FakePool:
    """``pool.connection()`` -> ``conn.transaction()`` / ``conn.cursor()`` -> ``cur.execute[many]``, recorded."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    def _cm(self, enter: str, exit_: str, value: Any) -> Any:
        log = self.log

        class CM:
            async def __aenter__(self) -> Any:
                log.append(enter)
                return value

            async def __aexit__(self, *exc: Any) -> None:
                log.append(exit_)

        return CM()

    def connection(self) -> Any:
        pool = self

        class Conn:
            def transaction(self) -> Any:
                return pool._cm("begin", "commit", None)

            def cursor(self) -> Any:
                class Cur:
                    async def execute(self, sql: str, params: tuple) -> None:
                        pool.log.append((sql, params))

                    async def executemany(self, sql: str, params_seq: list) -> None:
                        pool.log.extend((sql, params) for params in params_seq)

                return pool._cm("cursor", "close", Cur())

        return self._cm("connect", "release", Conn())


async def test_write_batch_runs_the_statements_in_one_transaction() -> None:
    pool = FakePool()
    stmts = statements([TweetPosted(1, 2, "x", MS), UserFollowed(3, 2, MS)])
    await write_batch(pool, stmts, 5.0)  # type: ignore[arg-type]
    assert pool.log == ["connect", "begin", "cursor", *stmts, "close", "commit", "release"]


async def test_agent_projects_good_events_and_skips_bad_ones(
    faust_test_app: Any, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = FakePool()
    written: list[list] = []
    done = asyncio.Event()

    async def get_pool() -> FakePool:
        return pool

    async def recording_write(p: Any, stmts: Any, timeout_s: float) -> None:
        written.append(list(stmts))
        done.set()

    monkeypatch.setattr(projection_mod, "get_pool", get_pool)
    monkeypatch.setattr(projection_mod, "write_batch", recording_write)
    messages = [
        msg_for(settings.topic_tweets, 1, TweetPosted(10, 1, "a", MS)),
        Msg(settings.topic_tweets, b"1", b"{broken", 0),
        msg_for(settings.topic_follows, 1, UserFollowed(2, 1, MS)),
        msg_for(settings.topic_follows, 1, {"type": "followed", "follower_id": 1, "followee_id": 1, "at": 1}),
        msg_for(settings.topic_tweets, 1, TweetDeleted(10, 1, MS)),
    ]
    one_batch(monkeypatch, projection_mod, len(messages))
    async with projection_mod.project_to_postgres.test_context() as tc:
        await put_messages(tc, messages)
        await wait_for_batch(tc, done)
    assert written == [[
        (INSERT_TWEET, (10, 1, "a", AT, 10, 1)),
        (FOLLOW, (2, 1, AT)),
        (DELETE_TWEET, (AT, 10, 1, 10, 1, AT, 10)),
    ]]
    assert sinks.cassandra.calls == [], "PostgreSQL alone decides (the fanout stage claims in the same table)"
