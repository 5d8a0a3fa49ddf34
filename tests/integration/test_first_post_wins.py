"""docs/events.md's promises hold against any producer, end to end on the real servers.

An outside producer re-posts an existing tweet id with another text and author, deletes
someone else's tweet, and sends deletes before the tweets they name. A real worker (its
own namespace) must keep the first tweet everywhere - home timelines of both authors'
followers, author timelines, the Redis tweet body, Cassandra's and PostgreSQL's rows -
dead-letter the rejected events with their reason, and let an early delete hide a tweet
only if its author sent it.
"""
from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from redis.asyncio import Redis

from localenv.worker import Worker
from localenv.workload import produce
from ops.lag import wait_caught_up
from ops.schema import apply_cassandra, apply_postgres
from policies.first_wins import Post, StoredTweet, post_verdict
from policies.partitioning import partition_for_id
from policies.reference import reference_home_timelines
from schemas import TweetPosted
from schemas.tweet_json import render_tail
from sinks.cassandra import CassandraStore
from sinks.postgres import INSERT_TWEET, TweetClaims, _ts
from tests.integration.pipeline_harness import drop, isolated_settings, provision, reader_for
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_post_durability import pg_address, via
from tests.integration.test_pipeline_correctness import read_dead_letters

NOW = 1_715_000_000_000
T0 = 1_790_000_000_000_000_001  # tweet ids (any positive int64 is valid)


def authors_on_two_partitions(partitions: int) -> tuple[int, int]:
    a = 1_000_001
    b = next(u for u in range(a + 1, a + 1000) if partition_for_id(u, partitions) != partition_for_id(a, partitions))
    return a, b


def post(tweet_id: int, author: int, text: str, at: int = NOW) -> dict:
    return {"type": "tweet_posted", "tweet_id": tweet_id, "author_id": author, "text": text, "created_at": at}


def delete(tweet_id: int, author: int, at: int = NOW + 1000) -> dict:
    return {"type": "tweet_deleted", "tweet_id": tweet_id, "author_id": author, "deleted_at": at}


def follow(follower: int, followee: int) -> dict:
    return {"type": "followed", "follower_id": follower, "followee_id": followee, "at": NOW - 1000}


async def caught_up(settings, worker: Worker) -> None:
    try:
        await wait_caught_up(settings, timeout=180, check=worker.check)
    except TimeoutError:
        pytest.fail(f"pipeline did not catch up\n{worker.log_tail()}")


async def postgres_rows(settings, ids: list[int], *, expect: int) -> dict[int, tuple]:
    """tweet_id -> (author_id, text, deleted?) once the projection holds ``expect`` of ``ids``."""
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, **settings.postgres_kwargs()) as conn:
        for _ in range(60):
            rows = await (await conn.execute(
                "SELECT tweet_id, author_id, text, deleted_at IS NOT NULL FROM tweets WHERE tweet_id = ANY(%s)",
                (ids,))).fetchall()
            if len(rows) >= expect:
                break
            await asyncio.sleep(0.5)
    return {r[0]: tuple(r[1:]) for r in rows}


@pytest.mark.slow
async def test_reposts_and_foreign_deletes_change_nothing_and_are_dead_lettered(tmp_path):
    settings = isolated_settings(tmp_path)
    provision(settings)
    a, b = authors_on_two_partitions(settings.topic_partitions)
    fan_a, fan_b, fan_both = 2_000_001, 2_000_002, 2_000_003
    fans = [fan_a, fan_b, fan_both]
    taken, foreign_delete, early_own, early_foreign, b_own = (T0 + i for i in range(5))
    # Phase 1 is processed before phase 2: the first post of `taken` is a's, and the early
    # deletes are processed before the posts they name (on another partition for early_foreign).
    phase1 = [
        follow(fan_a, a), follow(fan_b, b), follow(fan_both, a), follow(fan_both, b),
        *({"type": "user_active", "user_id": u, "at": NOW - 500} for u in fans),
        post(taken, a, "the original"),
        post(foreign_delete, a, "mine to delete"),
        delete(early_own, a),
        delete(early_foreign, b),
    ]
    phase2 = [
        post(taken, b, "hijacked", NOW + 5),  # another author, text and time: dead-lettered
        delete(foreign_delete, b),  # not b's tweet: dead-lettered
        post(early_own, a, "deleted before it came"),  # hidden by a's own early delete
        post(early_foreign, a, "b cannot hide this"),  # b's early delete does not count
        post(b_own, b, "b's own tweet"),
    ]
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        await produce(settings, phase1)
        await caught_up(settings, worker)
        await produce(settings, phase2)
        await caught_up(settings, worker)
        assert worker.alive(), worker.log_tail()

        # Home timelines: the original only, for followers of either author.
        expected = {
            fan_a: [early_foreign, foreign_delete, taken],
            fan_b: [b_own],
            fan_both: [b_own, early_foreign, foreign_delete, taken],
        }
        assert {u: reference_home_timelines(phase1 + phase2)[u] for u in fans} == expected
        async with reader_for(settings) as reader:
            got = {u: await reader.all_ids(u, page_size=10) for u in fans}
            assert got == expected
            bodies = await reader.hydrate([taken, early_foreign, early_own])
            shown = bodies[taken]  # from the cache: its rendered tail holds text and time (sinks.redis_tweets)
            assert shown.author_id == a and shown.rendered == render_tail("the original", NOW)
            assert bodies[early_foreign].author_id == a
            assert early_own not in bodies, "deleted"
            assert [t.tweet_id for t in (await reader.author_page(b, limit=10)).tweets] == [b_own]
            assert [t.tweet_id for t in (await reader.author_page(a, limit=10)).tweets] == [
                early_foreign, foreign_delete, taken]
            # Not even pushed: the raw stores, not just what reads filter.
            session, ks = reader.cassandra.session, settings.cassandra_keyspace
            assert session.execute(f"SELECT tweet_id FROM {ks}.author_timeline WHERE author_id = %s AND tweet_id = %s",
                                   (b, taken)).one() is None, "not in the reposter's author timeline"
            assert session.execute(f"SELECT tweet_id FROM {ks}.user_timeline WHERE user_id = %s AND tweet_id = %s",
                                   (fan_b, taken)).one() is None, "not pushed to the reposter's followers"
            row = session.execute(f"SELECT author_id, text, created_at, deleted_at FROM {ks}.tweets WHERE tweet_id = %s",
                                  (taken,)).one()
            assert (row.author_id, row.text, row.created_at, row.deleted_at) == (a, "the original", NOW, None)
            row = session.execute(f"SELECT author_id, deleted_at FROM {ks}.tweets WHERE tweet_id = %s",
                                  (foreign_delete,)).one()
            assert (row.author_id, row.deleted_at) == (a, None)

        redis = Redis.from_url(settings.redis_url)
        try:
            cached = await redis.get(f"{settings.redis_prefix}tb:{taken}")
            # The body as first posted: its author and pre-rendered page JSON (schemas/tweet_json.py).
            assert cached == b"%d:%b" % (a, render_tail("the original", NOW))
            for kept in (foreign_delete, early_foreign):  # deletes by another author: no delete mark
                assert not (await redis.get(f"{settings.redis_prefix}tb:{kept}") or b"").startswith(b"d")
        finally:
            await redis.aclose()

        ids = [taken, foreign_delete, early_own, early_foreign, b_own]
        pg = await postgres_rows(settings, ids, expect=len(ids))
        assert pg == {
            taken: (a, "the original", False),
            foreign_delete: (a, "mine to delete", False),
            early_own: (a, "deleted before it came", True),
            early_foreign: (a, "b cannot hide this", False),
            b_own: (b, "b's own tweet", False),
        }

        letters = await read_dead_letters(settings, 2, timeout=15)
        reasons = sorted(letter["reason"] for letter in letters)
        assert len(reasons) == 2, reasons
        assert f"tweet_id {taken} is already taken" in reasons[1] and f"author_id {a}" in reasons[1]
        assert f"tweet_deleted of tweet_id {foreign_delete} names author_id {b}" in reasons[0]
        assert "only the author" in reasons[0]
        assert all(letter["stage"] == "fanout" and letter["key"] == str(b) for letter in letters)
    finally:
        worker.stop()
        drop(settings)


async def test_claims_against_the_real_postgresql(tmp_path):
    """``TweetClaims.claim``: new ids, a replay, a conflict, the projection's insert first, an
    author's early delete taken along, and Cassandra's rows read for the same ids."""
    settings = isolated_settings(tmp_path)
    apply_cassandra(settings)
    apply_postgres(settings)
    claims = TweetClaims(settings)
    store = await asyncio.to_thread(CassandraStore.open, settings)
    try:
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True,
                                                         **settings.postgres_kwargs()) as conn:
            # the projection got there first for id 3 (its own insert), and kept author 10's
            # early delete of id 5 aside
            await conn.execute(INSERT_TWEET, (3, 12, "projected", _ts(NOW), 3, 12))
            await conn.execute("INSERT INTO tweet_early_deletes (tweet_id, author_id, deleted_at) VALUES (5, 10, %s)",
                               (_ts(NOW + 5),))
            got = await claims.claim([(1, 10, "one", NOW), (2, 10, "two", NOW + 1), (3, 10, "three", NOW),
                                      (5, 10, "five", NOW)])
            assert got == {1: StoredTweet(1, 10, "one", NOW), 2: StoredTweet(2, 10, "two", NOW + 1),
                           3: StoredTweet(3, 12, "projected", NOW), 5: StoredTweet(5, 10, "five", NOW)}
            again = await claims.claim([(1, 10, "one", NOW), (2, 11, "hijack", NOW + 1), (4, 12, "four", NOW)])
            assert again == {1: got[1], 2: got[2], 4: StoredTweet(4, 12, "four", NOW)}
            assert post_verdict(again[1], TweetPosted(1, 10, "one", NOW)) is Post.SAME
            assert post_verdict(again[2], TweetPosted(2, 11, "hijack", NOW + 1)) is Post.CONFLICT
            rows = await (await conn.execute(
                "SELECT tweet_id, author_id, text, deleted_at IS NOT NULL FROM tweets ORDER BY tweet_id")).fetchall()
            assert rows == [(1, 10, "one", False), (2, 10, "two", False), (3, 12, "projected", False),
                            (4, 12, "four", False), (5, 10, "five", True)], "the early delete came along"
        # Cassandra: a winner's body (written after its claim) and an older worker's placeholder
        ks = settings.cassandra_keyspace
        await asyncio.to_thread(store.session.execute, f"UPDATE {ks}.tweets SET deleted_at = 77 WHERE tweet_id = 2")
        await store.execute_many([("insert_tweet", (1, 10, "one", NOW)), ("insert_tweet", (2, 10, "two", NOW + 1))])
        rows = await store.read_tweets([1, 2, 6], chunk=2)
        assert rows == {1: StoredTweet(1, 10, "one", NOW), 2: StoredTweet(2, 10, "two", NOW + 1, 77)}, \
            "the body insert leaves the delete mark alone"
    finally:
        await claims.close()
        await asyncio.to_thread(store.close)
        drop(settings)


async def test_concurrent_claims_of_the_same_ids_agree_on_one_winner(tmp_path):
    """Two workers (their own pools) claim the same 2,000 ids for different authors at once,
    in batches of different sizes and orders: each id has one winner, both are told the same."""
    settings = isolated_settings(tmp_path)
    apply_postgres(settings)
    one, two = TweetClaims(settings), TweetClaims(settings)
    try:
        ids = list(range(1, 2001))

        async def claim_all(claims: TweetClaims, author: int, order: list[int], size: int) -> dict[int, StoredTweet]:
            out: dict[int, StoredTweet] = {}
            for i in range(0, len(order), size):
                out.update(await claims.claim([(t, author, f"by {author}", NOW) for t in order[i:i + size]]))
            return out

        got_a, got_b = await asyncio.gather(claim_all(one, 1, ids, 100), claim_all(two, 2, ids[::-1], 37))
        assert got_a == got_b
        winners = {s.author_id for s in got_a.values()}
        assert len(got_a) == 2000 and winners <= {1, 2}
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, **settings.postgres_kwargs()) as conn:
            rows = dict(await (await conn.execute("SELECT tweet_id, author_id FROM tweets")).fetchall())
        assert rows == {t: s.author_id for t, s in got_a.items()}
    finally:
        await one.close()
        await two.close()
        drop(settings)


async def test_a_claim_on_a_link_that_stopped_answering_is_given_up_and_retried_on_a_new_connection(tmp_path):
    """PostgreSQL behind a link that goes half-open mid-way (no reset: a partition, a paused
    server): the claim waiting on it fails with a ``TimeoutError`` (transient: the stage's
    retry loop takes it, and the health check hears of it) after ``TL_POSTGRES_TIMEOUT_S``
    plus psycopg's attempt to cancel the statement (10 s), instead of holding stage 1 for as
    long as the kernel keeps the connection; once the link answers, the next claim works."""
    base = isolated_settings(tmp_path)
    apply_postgres(base)
    proxy = await TcpProxy(*pg_address(base)).start()
    claims = TweetClaims(via(base, proxy).replace(postgres_timeout_s=1.0))
    try:
        assert (await claims.claim([(1, 10, "one", NOW)]))[1].author_id == 10
        proxy.blackhole()
        began = time.monotonic()
        stuck = asyncio.ensure_future(claims.claim([(2, 10, "two", NOW)]))
        done, _ = await asyncio.wait([stuck], timeout=1.0 + 10 + 5)
        assert done, "the claim still waits on the silent link"
        with pytest.raises(TimeoutError):
            stuck.result()
        assert time.monotonic() - began > 1.0
        proxy.heal()
        got = await claims.claim([(2, 10, "two", NOW), (3, 10, "three", NOW)])
        assert sorted(got) == [2, 3]
    finally:
        await claims.close()
        await proxy.stop()
        drop(base)
