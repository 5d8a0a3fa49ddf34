"""The Post service's ids and Idempotency-Keys do not depend on Redis (issue 11), against the
real PostgreSQL, Kafka and a private ``redis-server`` (``private_redis``: these tests flush
it). Each test has a namespace of its own (PostgreSQL schema, topics).

* Snowflake worker ids are leased from PostgreSQL: instances never share one, even after
  FLUSHALL; an instance that cannot renew (a half-open connection to PostgreSQL) stops
  issuing ids, 503, before its row can be taken, and the next holder starts above its ids;
  a row taken over is reported as such.
* Idempotency-Key records are in PostgreSQL: a retry after FLUSHALL, or on another
  instance, returns the same tweet and posts once; expired records are swept.
* A 503 whose outcome is unknown says so, and a retry with the same key posts the same
  tweet once.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from redis.asyncio import Redis

from ops.schema import apply_postgres, create_topics_async, drop_namespace
from policies.snowflake import parse_snowflake, snowflake_timestamp_ms
from policies.worker_lease import LeaseTiming
from post.leases import PostgresLeases
from post.worker_id import NoWorkerId, WorkerIdSource
from settings import Settings
from tests.integration.pipeline_harness import isolated_settings
from tests.integration.post_fixtures import assert_problem, events_on, running_client, signup, unique_handle
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def world(tmp_path, private_redis) -> AsyncIterator[Settings]:
    redis_url, _ = private_redis
    settings = isolated_settings(tmp_path, redis_url=redis_url, snowflake_worker_id=-1)
    await asyncio.to_thread(apply_postgres, settings)
    await create_topics_async(settings, partitions=settings.topic_partitions)
    yield settings
    done = await drop_namespace(settings)
    assert not [k for k in done if k.endswith("_error")], done


async def connect(settings: Settings) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True,
                                                 **settings.postgres_kwargs())


async def one(db: psycopg.AsyncConnection[Any], sql: str, params: Any = ()) -> Any:
    cur = await db.execute(sql, params)
    return await cur.fetchone()


def via(settings: Settings, proxy: TcpProxy) -> Settings:
    """``settings`` with PostgreSQL reached through ``proxy``."""
    url = urllib.parse.urlsplit(settings.postgres_dsn)
    netloc = url.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return settings.replace(postgres_dsn=url._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
                            .geturl())


def pg_address(settings: Settings) -> tuple[str, int]:
    url = urllib.parse.urlsplit(settings.postgres_dsn)
    return url.hostname or "127.0.0.1", url.port or 5432


async def until(predicate, timeout: float, what: Any, every: float = 0.1) -> Any:
    """The first true value of ``predicate()`` within ``timeout`` s (``what``: a string or a
    callable giving one, for the failure)."""
    end = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        await asyncio.sleep(every)


async def set_topic_config(settings: Settings, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


# --- worker ids ------------------------------------------------------------------------


async def test_instances_never_share_a_worker_id_even_after_flushall(world):
    redis = Redis.from_url(world.redis_url)
    db = await connect(world)
    try:
        async with running_client(world, instance="it-a") as a, running_client(world, instance="it-b") as b:
            users = {"a": await signup(a), "b": await signup(b)}
            await redis.flushall()  # what a restart of Redis without persistence does
            async with running_client(world, instance="it-c") as c:
                clients = {"a": a, "b": b, "c": c}
                users["c"] = await signup(c)
                sources = {name: cl.app.state.resources.ids for name, cl in clients.items()}
                workers = {name: s.worker_id for name, s in sources.items()}
                assert None not in workers.values() and len(set(workers.values())) == 3, workers
                # The leases live in PostgreSQL: untouched by the flush, still renewable.
                assert await sources["a"].renew() and await sources["b"].renew()
                cur = await db.execute("SELECT worker_id, holder FROM snowflake_worker_leases "
                                       "WHERE expires_at > now() ORDER BY worker_id")
                assert {wid: holder for wid, holder in await cur.fetchall()} == {
                    workers[name]: f"it-{name}" for name in clients}
                tweets = []
                for name, client in clients.items():
                    for i in range(3):
                        resp = await client.post("/v1/tweets", json={"text": f"{name}{i}"},
                                                 headers=users[name]["auth"])
                        assert resp.status_code == 201, resp.text
                        tweet_id = int(resp.json()["tweet_id"])
                        assert parse_snowflake(tweet_id).worker_id == workers[name]
                        tweets.append(tweet_id)
                assert len(set(tweets)) == len(tweets) == 9
        # Released on shutdown: every row is free again.
        assert (await one(db, "SELECT count(*) FROM snowflake_worker_leases WHERE expires_at > now()"))[0] == 0
    finally:
        await db.close()
        await redis.aclose()


@pytest.mark.slow
async def test_a_lease_that_cannot_be_renewed_stops_ids_before_it_can_be_taken(world):
    ttl = 6.0  # renewed every 2 s, trusted 5 s, statements abandoned after 1 s
    proxy = await TcpProxy(*pg_address(world)).start()
    db = await connect(world)
    other = WorkerIdSource(PostgresLeases(world.postgres_dsn, world.postgres_kwargs(), statement_timeout_s=2.0),
                           epoch_ms=world.snowflake_epoch_ms, instance="it-next", timing=LeaseTiming.for_ttl(ttl))
    try:
        settings = via(world, proxy).replace(snowflake_lease_ttl_s=ttl, post_rate_burst=10_000, post_rate_per_s=1000.0)
        async with running_client(settings, instance="it-cut") as client:
            ids = client.app.state.resources.ids
            wid = ids.worker_id
            assert wid is not None
            # Every other worker id is someone else's for an hour: a second process can only
            # ever get this one.
            await db.execute("UPDATE snowflake_worker_leases SET holder = 'it-others', epoch = epoch + 1, "
                             "expires_at = now() + interval '1 hour' WHERE worker_id <> %s", (wid,))
            user = await signup(client)
            post = lambda: client.post("/v1/tweets", json={"text": "fenced"}, headers=user["auth"])  # noqa: E731
            resp = await post()  # also caches the token: posting needs no PostgreSQL from here on
            assert resp.status_code == 201, resp.text
            issued = [int(resp.json()["tweet_id"])]

            # PostgreSQL becomes unreachable, the connections half-open: renewals hang and are
            # abandoned. Ids keep coming while the lease is trusted, then stop.
            proxy.blackhole()
            cut = time.monotonic()
            while True:
                resp = await post()
                if resp.status_code != 201:
                    break
                issued.append(int(resp.json()["tweet_id"]))
                assert time.monotonic() - cut < ttl, "ids still issued after the lease's TTL"
                await asyncio.sleep(0.05)
            left, holder = await one(db, "SELECT extract(epoch FROM expires_at - now())::float8, holder "
                                         "FROM snowflake_worker_leases WHERE worker_id = %s", (wid,))
            assert_problem(resp, 503, f"cannot issue ids: no Snowflake worker id is leased from PostgreSQL: "
                                      f"the lease on worker id {wid} was not renewed in time")
            assert "PostgreSQL did not answer within 1 s" in resp.json()["detail"]
            # ...before PostgreSQL would let anyone else have the number.
            assert holder == "it-cut" and left > 0, f"ids stopped {-left:.2f} s after the row expired"
            assert len(issued) > 3  # it did issue ids while the lease was trusted

            # A second process gets the number only once the row expired, and starts above
            # every id the first one issued.
            with pytest.raises(NoWorkerId, match="all 1024 worker ids are leased"):
                await other.acquire()
            await asyncio.sleep(left + 0.05)
            assert await other.acquire() == wid
            assert other.held.grant.issue_after_ms >= max(snowflake_timestamp_ms(t) for t in issued)
            theirs = [other.next_id() for _ in range(5)]
            assert min(theirs) > max(issued)

            # The network comes back: the first process finds its row taken over, says so,
            # and issues nothing while no number is free.
            proxy.heal()

            async def says_taken_over():
                r = await post()
                assert r.status_code == 503, r.text
                return "taken over" in r.json()["detail"] and r

            resp = await until(says_taken_over, 10, "the 503 names the takeover")
            assert_problem(resp, 503, f"the lease on worker id {wid} (generation ")
            assert "was taken over by 'it-next' (generation " in resp.json()["detail"]
            assert "all 1024 worker ids are leased" in resp.json()["detail"]

            # The number is released: the first process takes it again, above the second's ids.
            await other.stop()

            async def posted():
                r = await post()
                return r.status_code == 201 and r

            resp = await until(posted, 10, "ids again once a number is free")
            assert parse_snowflake(int(resp.json()["tweet_id"])).worker_id == wid
            assert int(resp.json()["tweet_id"]) > max(theirs)
    finally:
        await other.stop()
        await db.close()
        await proxy.stop()


# --- Idempotency-Key -------------------------------------------------------------------


async def test_a_retry_after_redis_lost_everything_returns_the_same_tweet_once(world):
    redis = Redis.from_url(world.redis_url)
    db = await connect(world)
    key = "flush-" + unique_handle()
    try:
        async with running_client(world, instance="it-x") as x:
            user = await signup(x)
            uid = int(user["user_id"])
            headers = {**user["auth"], "Idempotency-Key": key}
            first = await x.post("/v1/tweets", json={"text": "only once"}, headers=headers)
            assert first.status_code == 201 and "idempotent-replayed" not in first.headers
            await redis.flushall()
            assert await redis.dbsize() == 0
            again = await x.post("/v1/tweets", json={"text": "only once"}, headers=headers)
            assert again.status_code == 201, again.text
            assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
            done, tweet_id, ttl, locked = await one(
                db, "SELECT done, tweet_id, extract(epoch FROM expires_at - now())::float8, locked_until "
                    "FROM idempotency_keys WHERE user_id = %s AND key_hash = %s",
                (uid, hashlib.sha256(key.encode()).digest()))
            assert done and str(tweet_id) == first.json()["tweet_id"] and locked is None
            assert 23 * 3600 < ttl <= 24 * 3600
        # Another instance (a restart), after another flush: the same answer.
        await redis.flushall()
        async with running_client(world, instance="it-y") as y:
            third = await y.post("/v1/tweets", json={"text": "only once"}, headers=headers)
            assert third.status_code == 201 and third.json() == first.json()
            reused = await y.post("/v1/tweets", json={"text": "another text"}, headers=headers)
            assert_problem(reused, 422, "this Idempotency-Key was already used for a different text")
        found = await events_on(world, world.topic_tweets, author_id=uid)
        assert [e.tweet_id for _, e in found] == [int(first.json()["tweet_id"])]
    finally:
        await db.close()
        await redis.aclose()


async def test_expired_records_count_as_absent_and_are_swept_in_bounded_batches(world):
    db = await connect(world)
    try:
        async with running_client(world) as client:
            res = client.app.state.resources
            user = await signup(client)
            uid = int(user["user_id"])
            headers = {**user["auth"], "Idempotency-Key": "old"}
            first = await client.post("/v1/tweets", json={"text": "day one"}, headers=headers)
            assert first.status_code == 201
            # A day later (not swept yet): the key is new again.
            await db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 s' WHERE user_id = %s",
                             (uid,))
            second = await client.post("/v1/tweets", json={"text": "day two"}, headers=headers)
            assert second.status_code == 201 and "idempotent-replayed" not in second.headers
            assert second.json()["tweet_id"] != first.json()["tweet_id"]

            await db.execute(
                "INSERT INTO idempotency_keys (user_id, key_hash, expires_at, locked_until) "
                "SELECT %s, int8send(n), now() - interval '1 hour', "
                "       CASE WHEN n = 0 THEN now() + interval '30 s' END "
                "FROM generate_series(0, 6) AS n", (uid,))
            store = res.idempotency
            store.batch, store.max_batches = 2, 2  # bounded: 4 rows per sweep
            assert await store.sweep() == 4
            assert await store.sweep() == 2  # the locked one stays while locked
            assert await store.sweep() == 0
            cur = await db.execute("SELECT key_hash = int8send(0), expires_at > now() FROM idempotency_keys "
                                   "WHERE user_id = %s ORDER BY 1", (uid,))
            assert await cur.fetchall() == [(False, True), (True, False)]
    finally:
        await db.close()


async def test_an_unknown_outcome_says_so_and_a_retry_with_the_key_posts_the_same_tweet(world):
    topic = world.topic_tweets
    db = await connect(world)
    key = "unknown-" + unique_handle()
    try:
        async with running_client(world, kafka_timeout_s=3.0) as client:
            user = await signup(client)
            uid = int(user["user_id"])
            headers = {**user["auth"], "Idempotency-Key": key}
            # The broker refuses the record after the producer took it: the service cannot
            # tell whether it reached the log. (The broker applies a topic's new config a
            # moment after it is set: posts without a key go through until then.)
            await set_topic_config(world, topic, {"max.message.bytes": "64"})
            try:
                async def refused():
                    r = await client.post("/v1/tweets", json={"text": "no key"}, headers=user["auth"])
                    assert r.status_code in (201, 503), r.text
                    return r.status_code == 503 and r

                bare = await until(refused, 10, "the broker refuses the tweets", every=0.1)
                body = assert_problem(bare, 503, "the outcome is unknown")
                assert "This request had no Idempotency-Key, so retrying it may post the tweet twice; send an " \
                       "Idempotency-Key header" in body["detail"]

                resp = await client.post("/v1/tweets", json={"text": "maybe"}, headers=headers)
                body = assert_problem(resp, 503, "the outcome is unknown: the tweet was handed to the event log "
                                                 "but not acknowledged in time, so it may or may not be posted")
                assert "Retry with the same Idempotency-Key and the same text: you get the same tweet, posted once" \
                    in body["detail"]
                assert body["outcome"] == "unknown" and resp.headers["retry-after"] == "1"
                assert "nothing was accepted" not in body["detail"]
                pending, done, locked = await one(
                    db, "SELECT tweet_id, done, locked_until FROM idempotency_keys WHERE user_id = %s", (uid,))
                assert not done and locked is None  # kept, and free for the retry
            finally:
                await set_topic_config(world, topic, {"max.message.bytes": "1048588"})

            answers = []

            async def retried():
                r = await client.post("/v1/tweets", json={"text": "maybe"}, headers=headers)
                assert r.status_code in (201, 503), r.text
                answers.append(r.text)
                return r.status_code == 201 and r

            resp = await until(retried, 10, lambda: f"the retry is accepted (last answers: {answers[-2:]})", every=0.2)
            assert resp.json()["tweet_id"] == str(pending) and "idempotent-replayed" not in resp.headers
            replay = await client.post("/v1/tweets", json={"text": "maybe"}, headers=headers)
            assert replay.json() == resp.json() and replay.headers["idempotent-replayed"] == "true"
        found = [e for _, e in await events_on(world, topic, author_id=uid) if e.text == "maybe"]
        assert [e.tweet_id for e in found] == [pending]
    finally:
        await db.close()


# --- docs/events.md ----------------------------------------------------------------------


def documented_lease_sql() -> list[str]:
    """The three ```sql blocks of docs/events.md's "Leasing a worker id" (take, renew, release)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    section = doc.split("## Leasing a worker id", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3, blocks
    return blocks


def psql(sql: str, **variables: Any) -> str:
    """``sql`` with psql's ``:'name'`` (a quoted literal) and ``:name`` filled in."""
    for name, value in variables.items():
        if isinstance(value, str):
            sql = sql.replace(f":'{name}'", "'" + value.replace("'", "''") + "'")
        else:
            sql = re.sub(rf"(?<!:):{name}\b", str(int(value)), sql)
    assert not re.search(r"(?<!:):[a-z'_]", sql), sql  # every variable filled (not :: casts)
    return sql


async def test_the_documented_lease_statements_work(world):
    take, renew, release = documented_lease_sql()
    db = await connect(world)
    service = WorkerIdSource(PostgresLeases(world.postgres_dsn, world.postgres_kwargs()),
                             epoch_ms=world.snowflake_epoch_ms, instance="it-service")
    try:
        wid, epoch, issue_after, expires = await one(db, psql(take, holder="doc-producer", ttl_ms=60_000))
        assert (wid, epoch, issue_after) == (0, 1, 0)
        now_ms = (await one(db, "SELECT (extract(epoch FROM now()) * 1000)::bigint"))[0]
        assert 59_000 < expires - now_ms <= 60_000
        # The service cannot have it while the outside producer holds it.
        assert await service.acquire() == 1
        (renewed,) = await one(db, psql(renew, holder="doc-producer", ttl_ms=60_000, worker_id=wid, epoch=epoch))
        assert renewed >= expires
        assert await one(db, psql(renew, holder="someone-else", ttl_ms=60_000, worker_id=wid, epoch=epoch)) is None
        last_id_ms = now_ms + 5
        cur = await db.execute(psql(release, holder="doc-producer", worker_id=wid, epoch=epoch,
                                    after_ms=last_id_ms + 1))
        assert cur.rowcount == 1
        await asyncio.sleep(0.01)
        # Released: the next holder (the service, here) gets it, above the producer's last id.
        await service.stop()
        assert await service.acquire() == 0
        grant = service.held.grant
        assert grant.epoch == 2 and grant.issue_after_ms >= last_id_ms + 1
        assert parse_snowflake(service.next_id()).timestamp_ms > last_id_ms
    finally:
        await service.stop()
        await db.close()
