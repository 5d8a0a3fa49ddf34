"""The Post service against the real Kafka, Redis and PostgreSQL (``python -m localenv up``).

Each module gets its own topics (unique prefix, 4 partitions); each test its own users
(uuid handles). Events are read back from the broker with a real consumer, and their
partition is checked against aiokafka's DefaultPartitioner (murmur2 of the key).
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
import unicodedata
from datetime import datetime, timezone

import psycopg
import pytest

from api.auth import hash_token
from policies.snowflake import parse_snowflake
from post.idempotency import key_hash
from post.tweets import OWNER_TTL_S
from schemas.events import TweetDeleted, TweetPosted, UserActive, UserFollowed, UserUnfollowed, encode_key
from tests.integration.post_fixtures import (  # noqa: F401  (fixtures)
    PARTITIONS,
    assert_problem,
    events_on,
    expected_partition,
    post_client,
    post_settings,
    running_client,
    signup,
    unique_handle,
)

pytestmark = pytest.mark.integration


def app_of(client):
    return client.app


def assert_keyed(record, entity_id: int) -> None:
    key = encode_key(entity_id)
    assert record.key == key
    assert record.partition == expected_partition(key, PARTITIONS)


# --- sign up ---------------------------------------------------------------------------


async def test_signup_creates_account_and_emits_user_active(post_client, post_settings):
    handle = unique_handle("Sign")
    resp = await post_client.post("/v1/users", json={"handle": handle})
    assert resp.status_code == 201, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"user_id", "handle", "token"}
    assert body["handle"] == handle
    assert re.fullmatch(r"[1-9][0-9]*", body["user_id"])
    user_id = int(body["user_id"])
    assert len(body["token"]) >= 43

    res = app_of(post_client).state.resources
    async with res.pg_conn() as conn:
        cur = await conn.execute("SELECT handle, token_hash FROM users WHERE user_id = %s", (user_id,))
        row = await cur.fetchone()
    assert row[0] == handle
    assert bytes(row[1]) == hashlib.sha256(body["token"].encode()).digest() == hash_token(body["token"])

    found = await events_on(post_settings, post_settings.topic_activity, user_id=user_id)
    assert len(found) == 1
    record, event = found[0]
    assert isinstance(event, UserActive)
    assert_keyed(record, user_id)
    assert abs(event.at - time.time() * 1000) < 60_000


async def test_duplicate_handle_is_409_case_insensitively(post_client):
    handle = unique_handle("Dup")
    await signup(post_client, handle)
    resp = await post_client.post("/v1/users", json={"handle": handle.upper()})
    assert_problem(resp, 409, f"handle {handle.upper()!r} is already taken (handles are case-insensitive)",
                   exact=True)


# --- tweets ----------------------------------------------------------------------------


async def test_post_tweet_is_acknowledged_on_the_log(post_client, post_settings):
    user = await signup(post_client)
    uid = int(user["user_id"])
    resp = await post_client.post("/v1/tweets", json={"text": "hello\nworld 🌍"}, headers=user["auth"])
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == {"tweet_id", "author_id", "text", "created_at"}
    assert body["author_id"] == user["user_id"]
    assert body["text"] == "hello\nworld 🌍"
    tweet_id = int(body["tweet_id"])
    parts = parse_snowflake(tweet_id, post_settings.snowflake_epoch_ms)
    created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo == timezone.utc
    assert body["created_at"].endswith("Z")
    assert round(created.timestamp() * 1000) == parts.timestamp_ms
    assert parts.worker_id == app_of(post_client).state.resources.ids.worker_id

    found = await events_on(post_settings, post_settings.topic_tweets, tweet_id=tweet_id)
    assert len(found) == 1
    record, event = found[0]
    assert event == TweetPosted(tweet_id=tweet_id, author_id=uid, text="hello\nworld 🌍",
                                created_at=parts.timestamp_ms)
    assert_keyed(record, uid)

    res = app_of(post_client).state.resources
    owner = await res.redis.hgetall(f"tweet:owner:{tweet_id}")
    assert int(owner[b"a"]) == uid
    ttl = await res.redis.ttl(f"tweet:owner:{tweet_id}")
    assert OWNER_TTL_S - 60 < ttl <= OWNER_TTL_S


async def test_text_is_nfc_normalised(post_client, post_settings):
    user = await signup(post_client)
    decomposed = "Cafe\u0301 ﬁ"  # e + COMBINING ACUTE; the ligature is NFKC-only, kept
    resp = await post_client.post("/v1/tweets", json={"text": decomposed}, headers=user["auth"])
    assert resp.status_code == 201, resp.text
    assert resp.json()["text"] == unicodedata.normalize("NFC", decomposed) == "Café ﬁ"
    (_, event), = await events_on(post_settings, post_settings.topic_tweets, tweet_id=int(resp.json()["tweet_id"]))
    assert event.text == "Café ﬁ"


async def test_280_code_points_after_nfc_is_accepted(post_client):
    user = await signup(post_client)
    text = "e\u0301" * 280  # 560 code points submitted, 280 after NFC
    resp = await post_client.post("/v1/tweets", json={"text": text}, headers=user["auth"])
    assert resp.status_code == 201, resp.text
    assert len(resp.json()["text"]) == 280


async def test_delete_own_tweet_twice_is_204_with_one_event(post_client, post_settings):
    user = await signup(post_client)
    uid = int(user["user_id"])
    tweet_id = (await post_client.post("/v1/tweets", json={"text": "bye"}, headers=user["auth"])).json()["tweet_id"]

    resp = await post_client.delete(f"/v1/tweets/{tweet_id}", headers=user["auth"])
    assert resp.status_code == 204 and resp.content == b""
    resp = await post_client.delete(f"/v1/tweets/{tweet_id}", headers=user["auth"])
    assert resp.status_code == 204

    found = await events_on(post_settings, post_settings.topic_tweets, tweet_id=int(tweet_id))
    kinds = [type(e) for _, e in found]
    assert kinds == [TweetPosted, TweetDeleted]
    record, event = found[1]
    assert event.author_id == uid
    assert_keyed(record, uid)


async def test_delete_someone_elses_tweet_is_403_and_unknown_404(post_client, post_settings):
    author, other = await signup(post_client), await signup(post_client)
    tweet_id = (await post_client.post("/v1/tweets", json={"text": "mine"}, headers=author["auth"])).json()["tweet_id"]
    resp = await post_client.delete(f"/v1/tweets/{tweet_id}", headers=other["auth"])
    assert_problem(resp, 403, f"tweet {tweet_id} belongs to another user; only its author can delete it", exact=True)
    resp = await post_client.delete("/v1/tweets/9223372036854775807", headers=other["auth"])
    assert_problem(resp, 404, "no tweet with id 9223372036854775807", exact=True)
    found = await events_on(post_settings, post_settings.topic_tweets, tweet_id=int(tweet_id))
    assert [type(e) for _, e in found] == [TweetPosted]


async def test_delete_finds_the_author_in_the_postgres_projection(post_client, post_settings):
    """No Redis owner record (e.g. expired): the tweets table written by the projector decides."""
    author, other = await signup(post_client), await signup(post_client)
    uid = int(author["user_id"])
    res = app_of(post_client).state.resources
    live_id = random.randrange(2**61, 2**62)
    gone_id = live_id + 1
    async with res.pg_conn() as conn:  # stand-in for the Faust projector's rows
        await conn.execute(
            "INSERT INTO tweets (tweet_id, author_id, text, created_at, deleted_at) VALUES "
            "(%s, %s, 'projected', now(), NULL), (%s, %s, 'gone', now(), now())",
            (live_id, uid, gone_id, uid),
        )
    try:
        resp = await post_client.delete(f"/v1/tweets/{live_id}", headers=other["auth"])
        assert_problem(resp, 403, f"tweet {live_id} belongs to another user", exact=False)
        assert (await post_client.delete(f"/v1/tweets/{live_id}", headers=author["auth"])).status_code == 204
        assert (await post_client.delete(f"/v1/tweets/{gone_id}", headers=author["auth"])).status_code == 204
        live = await events_on(post_settings, post_settings.topic_tweets, tweet_id=live_id)
        assert [type(e) for _, e in live] == [TweetDeleted]
        assert_keyed(live[0][0], uid)
        # Already deleted in the projection: nothing emitted again.
        assert await events_on(post_settings, post_settings.topic_tweets, tweet_id=gone_id) == []
    finally:
        async with res.pg_conn() as conn:
            await conn.execute("DELETE FROM tweets WHERE tweet_id IN (%s, %s)", (live_id, gone_id))
        await res.redis.delete(f"tweet:owner:{live_id}", f"tweet:owner:{gone_id}")


# --- follows ---------------------------------------------------------------------------


async def test_follow_and_unfollow_emit_events_keyed_by_followee(post_client, post_settings):
    alice, bob = await signup(post_client), await signup(post_client)
    a, b = int(alice["user_id"]), int(bob["user_id"])
    path = f"/v1/users/{a}/following"
    for _ in range(2):  # following twice is harmless
        resp = await post_client.post(path, json={"target_user_id": str(b)}, headers=alice["auth"])
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"following": True}
    resp = await post_client.delete(f"{path}/{b}", headers=alice["auth"])
    assert resp.status_code == 200 and resp.json() == {"following": False}
    resp = await post_client.delete(f"{path}/{b}", headers=alice["auth"])
    assert resp.status_code == 200 and resp.json() == {"following": False}

    found = await events_on(post_settings, post_settings.topic_follows, follower_id=a)
    assert [type(e) for _, e in found] == [UserFollowed, UserFollowed, UserUnfollowed, UserUnfollowed]
    for record, event in found:
        assert event.followee_id == b
        assert_keyed(record, b)
    # All of a pair's events share a partition, so their order is the log order.
    assert [r.offset for r, _ in found] == sorted(r.offset for r, _ in found)


async def test_follow_rules(post_client, post_settings):
    alice, bob = await signup(post_client), await signup(post_client)
    a, b = alice["user_id"], bob["user_id"]
    resp = await post_client.post(f"/v1/users/{a}/following", json={"target_user_id": a}, headers=alice["auth"])
    assert_problem(resp, 422, "you cannot follow or unfollow yourself", exact=True)
    resp = await post_client.post(f"/v1/users/{b}/following", json={"target_user_id": a}, headers=alice["auth"])
    assert_problem(resp, 403, f"you are authenticated as user {a} and can only change your own follows", exact=False)
    resp = await post_client.post(f"/v1/users/{a}/following", json={"target_user_id": "1"}, headers=alice["auth"])
    assert_problem(resp, 404, "no user with id 1", exact=True)
    resp = await post_client.delete(f"/v1/users/{a}/following/1", headers=alice["auth"])
    assert_problem(resp, 404, "no user with id 1", exact=True)
    assert await events_on(post_settings, post_settings.topic_follows, follower_id=int(a)) == []


# --- idempotency -----------------------------------------------------------------------


async def test_idempotency_key_returns_the_same_tweet(post_client, post_settings):
    user = await signup(post_client)
    headers = {**user["auth"], "Idempotency-Key": "retry-" + unique_handle()}
    first = await post_client.post("/v1/tweets", json={"text": "once"}, headers=headers)
    second = await post_client.post("/v1/tweets", json={"text": "once"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers.get("idempotent-replayed") == "true"
    found = await events_on(post_settings, post_settings.topic_tweets, author_id=int(user["user_id"]))
    assert [e.tweet_id for _, e in found] == [int(first.json()["tweet_id"])]

    reused = await post_client.post("/v1/tweets", json={"text": "something else"}, headers=headers)
    assert_problem(reused, 422, "this Idempotency-Key was already used for a different text", exact=False)
    # A different key is a different tweet.
    other = await post_client.post("/v1/tweets", json={"text": "once"},
                                   headers={**user["auth"], "Idempotency-Key": "another"})
    assert other.status_code == 201 and other.json()["tweet_id"] != first.json()["tweet_id"]

    res = app_of(post_client).state.resources
    async with res.pg_conn() as conn:
        cur = await conn.execute(
            "SELECT done, extract(epoch FROM expires_at - now())::float8 FROM idempotency_keys "
            "WHERE user_id = %s AND key_hash = %s", (int(user["user_id"]), key_hash(headers["Idempotency-Key"])))
        done, ttl = await cur.fetchone()
    assert done and 23 * 3600 < ttl <= 24 * 3600


async def test_concurrent_retries_with_one_key_post_once(post_client, post_settings):
    user = await signup(post_client)
    headers = {**user["auth"], "Idempotency-Key": "race-" + unique_handle()}
    responses = await asyncio.gather(
        *(post_client.post("/v1/tweets", json={"text": "race"}, headers=headers) for _ in range(8))
    )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, [r.text for r in responses]
    ids = {r.json()["tweet_id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409, "still in progress", exact=False)
            assert r.headers["retry-after"] == "1"
    again = await post_client.post("/v1/tweets", json={"text": "race"}, headers=headers)
    assert again.status_code == 201 and again.json()["tweet_id"] in ids
    found = await events_on(post_settings, post_settings.topic_tweets, author_id=int(user["user_id"]))
    assert len(found) == 1


# --- rate limit ------------------------------------------------------------------------


async def test_rate_limit_is_429_with_retry_after(post_settings):
    settings = post_settings.replace(post_rate_burst=2, post_rate_per_s=0.01)
    async with running_client(settings) as client:
        user = await signup(client)
        for i in range(2):
            resp = await client.post("/v1/tweets", json={"text": f"n{i}"}, headers=user["auth"])
            assert resp.status_code == 201, resp.text
        resp = await client.post("/v1/tweets", json={"text": "n2"}, headers=user["auth"])
        body = assert_problem(resp, 429, "rate limit exceeded: at most 2 tweets at once, refilled at 0.01 per second",
                              exact=False)
        retry_after = int(resp.headers["retry-after"])
        assert 90 <= retry_after <= 100
        assert body["detail"].endswith(f"retry in {retry_after} s")
        # Another user has a bucket of their own.
        other = await signup(client)
        assert (await client.post("/v1/tweets", json={"text": "x"}, headers=other["auth"])).status_code == 201
    found = await events_on(post_settings, post_settings.topic_tweets, author_id=int(user["user_id"]))
    assert sorted(e.text for _, e in found) == ["n0", "n1"]


async def test_idempotent_replay_does_not_spend_tokens(post_settings):
    settings = post_settings.replace(post_rate_burst=1, post_rate_per_s=0.01)
    async with running_client(settings) as client:
        user = await signup(client)
        headers = {**user["auth"], "Idempotency-Key": "k1"}
        first = await client.post("/v1/tweets", json={"text": "a"}, headers=headers)
        assert first.status_code == 201
        for _ in range(3):
            again = await client.post("/v1/tweets", json={"text": "a"}, headers=headers)
            assert again.status_code == 201 and again.json() == first.json()
        assert (await client.post("/v1/tweets", json={"text": "b"}, headers=user["auth"])).status_code == 429


# --- Kafka unreachable -----------------------------------------------------------------


async def test_kafka_unreachable_is_fast_503_and_nothing_is_written(post_client, post_settings):
    user = await signup(post_client)
    uid = int(user["user_id"])
    broken = post_settings.replace(kafka_bootstrap="127.0.0.1:1")
    async with running_client(broken, kafka_timeout_s=3.0) as client:
        started = time.monotonic()
        resp = await client.post("/v1/tweets", json={"text": "lost"},
                                 headers={**user["auth"], "Idempotency-Key": "k-down"})
        elapsed = time.monotonic() - started
        assert_problem(resp, 503, "the event log is unavailable, nothing was accepted: "
                                  "Kafka at 127.0.0.1:1 is unreachable", exact=False)
        assert resp.headers["retry-after"] == "1"
        assert elapsed < 4.0

        handle = unique_handle("Down")
        resp = await client.post("/v1/users", json={"handle": handle})
        assert_problem(resp, 503, "Kafka at 127.0.0.1:1 is unreachable", exact=False)

        follow = await client.post(f"/v1/users/{uid}/following", json={"target_user_id": user["user_id"]},
                                   headers=user["auth"])
        assert follow.status_code == 422  # validation still answers without Kafka

        health = await client.get("/healthz")
        body = assert_problem(health, 503, "degraded: kafka unavailable", exact=True)
        assert body["checks"]["postgres"]["ok"] and body["checks"]["redis"]["ok"]

        res = client.app.state.resources
        async with res.pg_conn() as conn:
            cur = await conn.execute("SELECT count(*) FROM idempotency_keys WHERE user_id = %s AND key_hash = %s",
                                     (uid, key_hash("k-down")))
            assert (await cur.fetchone())[0] == 0  # no record, no lock
            cur = await conn.execute("SELECT count(*) FROM users WHERE lower(handle) = lower(%s)", (handle,))
            assert (await cur.fetchone())[0] == 0  # the signup was rolled back
            cur = await conn.execute("SELECT count(*) FROM tweets WHERE author_id = %s", (uid,))
            assert (await cur.fetchone())[0] == 0
    # The same key works once Kafka is back: nothing of the failed attempt was kept.
    ok = await post_client.post("/v1/tweets", json={"text": "lost"},
                                headers={**user["auth"], "Idempotency-Key": "k-down"})
    assert ok.status_code == 201 and "idempotent-replayed" not in ok.headers
    found = await events_on(post_settings, post_settings.topic_tweets, author_id=uid)
    assert [e.tweet_id for _, e in found] == [int(ok.json()["tweet_id"])]


# --- worker ids, health, metrics ------------------------------------------------------


async def test_concurrent_services_lease_distinct_worker_ids(post_settings):
    leased = post_settings.replace(snowflake_worker_id=-1)
    sql = "SELECT holder, extract(epoch FROM expires_at - now())::float8 FROM snowflake_worker_leases " \
          "WHERE worker_id = %s"
    async with running_client(leased, instance="it-a") as a, running_client(leased, instance="it-b") as b:
        ida = a.app.state.resources.ids
        idb = b.app.state.resources.ids
        assert ida.worker_id is not None and idb.worker_id is not None
        assert ida.worker_id != idb.worker_id
        wa, wb = ida.worker_id, idb.worker_id
        async with a.app.state.resources.pg_conn() as conn:
            assert (await (await conn.execute(sql, (wa,))).fetchone())[0] == "it-a"
            assert (await (await conn.execute(sql, (wb,))).fetchone())[0] == "it-b"
            await conn.execute("UPDATE snowflake_worker_leases SET expires_at = now() + interval '5 s' "
                               "WHERE worker_id = %s AND holder = 'it-a'", (wa,))
            assert await ida.renew()
            assert 55 <= (await (await conn.execute(sql, (wa,))).fetchone())[1] <= 60
        assert parse_snowflake(ida.next_id()).worker_id == wa
        assert ida.state()["ok"] and ida.state()["mode"] == "leased"
    # Released on shutdown (asked on a connection of our own: a new service would lease one).
    async with await psycopg.AsyncConnection.connect(post_settings.postgres_dsn, autocommit=True,
                                                     **post_settings.postgres_kwargs()) as conn:
        for wid in (wa, wb):
            assert (await (await conn.execute(sql, (wid,))).fetchone())[1] <= 0


async def test_fixed_worker_id_is_used_as_is(post_settings):
    async with running_client(post_settings.replace(snowflake_worker_id=1023)) as client:
        user = await signup(client)
        assert parse_snowflake(int(user["user_id"])).worker_id == 1023
        assert client.app.state.resources.ids.state() == {"ok": True, "worker_id": 1023, "mode": "fixed"}


async def test_healthz_reports_every_dependency(post_client):
    resp = await post_client.get("/healthz")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"postgres", "redis", "kafka", "snowflake"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["kafka"]["brokers"] >= 1


async def test_metrics_label_routes_by_template(post_client):
    user = await signup(post_client)
    await post_client.post("/v1/tweets", json={"text": "m"}, headers=user["auth"])
    text = (await post_client.get("/metrics")).text
    assert 'post_http_requests_total{method="POST",route="/v1/tweets",status="201"}' in text
    assert 'post_events_produced_total{type="tweet_posted"}' in text


async def test_worker_id_lease_is_exclusive_and_expires_locally(post_settings):
    from post.leases import PostgresLeases
    from post.worker_id import NoWorkerId, WorkerIdSource
    from policies.worker_lease import LeaseTiming

    def source(instance: str, ttl_s: float) -> WorkerIdSource:
        return WorkerIdSource(PostgresLeases(post_settings.postgres_dsn, post_settings.postgres_kwargs()),
                              epoch_ms=post_settings.snowflake_epoch_ms, instance=instance,
                              timing=LeaseTiming.for_ttl(ttl_s))

    first, second = source("it-first", 3), source("it-second", 3)
    db = await psycopg.AsyncConnection.connect(post_settings.postgres_dsn, autocommit=True,
                                               **post_settings.postgres_kwargs())
    try:
        n1 = await first.acquire()
        n2 = await second.acquire()
        assert n1 != n2
        assert parse_snowflake(first.next_id()).worker_id == n1
        # Not renewed: past TTL - margin (2.5 s) the holder stops issuing ids by itself...
        await asyncio.sleep(2.6)
        assert first.worker_id is None
        with pytest.raises(NoWorkerId, match=f"the lease on worker id {n1} was not renewed in time"):
            first.next_id()
        # ...and a renewal while the row is still ours (same generation) revalidates it.
        assert await first.renew()
        assert first.worker_id == n1
        # A lease taken over by someone else is not renewed, and ids stop at once.
        await db.execute("UPDATE snowflake_worker_leases SET holder = 'it-intruder', epoch = epoch + 1 "
                         "WHERE worker_id = %s", (n1,))
        assert not await first.renew()
        assert first.worker_id is None
        with pytest.raises(NoWorkerId, match=f"worker id {n1} .* was taken over by 'it-intruder'"):
            first.next_id()
        await first.release()  # does not free the intruder's row
        cur = await db.execute("SELECT holder, expires_at > now() FROM snowflake_worker_leases WHERE worker_id = %s",
                               (n1,))
        assert await cur.fetchone() == ("it-intruder", True)
    finally:
        await first.stop()
        await second.stop()
        await db.execute("UPDATE snowflake_worker_leases SET expires_at = now() WHERE worker_id = %s "
                         "AND holder = 'it-intruder'", (n1,))
        await db.close()
