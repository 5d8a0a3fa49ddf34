"""Abuse limits of the Post service and the query service, against the real Kafka, Redis and
PostgreSQL (``python -m localenv up``).

One isolated world for the module (``Settings.isolated``: own topics, PostgreSQL schema,
Redis prefix; no Cassandra keyspace - nothing here reads timelines). The apps run
in-process behind ``httpx.ASGITransport``, whose ``client`` sets the TCP peer address each
request comes from, so per-address limits are exercised with several addresses.

PostgreSQL's own statistics (``pg_stat_user_tables`` of the world's ``users`` table,
flushed when the app's connections close) count the token lookups PostgreSQL really
executed, so "garbage tokens cannot exhaust PostgreSQL" is measured on the server, not
on a double; the authenticator's own count must agree with it.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import psycopg
import pytest
import pytest_asyncio

from datetime import datetime, timezone

from api.auth import hash_token, new_token
from ops.schema import apply_postgres, create_topics_async
from policies.following import FOLLOW_INTENT_TTL_S, effective_following
from post.service import create_app as create_post_app
from query.service import create_app as create_query_app
from settings import Settings
from sinks.postgres import FOLLOW as PROJECT_FOLLOW
from tests.integration.pipeline_harness import drop, isolated_settings
from tests.integration.post_fixtures import assert_problem, events_on, unique_handle

pytestmark = pytest.mark.integration


def projected(pairs: list[tuple[int, int]]) -> list[tuple[int, int, datetime]]:
    """Parameters of the projection's own statement (``sinks.postgres.FOLLOW``, run by
    agents/projection.py) for follows that were on the log before the test started."""
    at = datetime.now(timezone.utc)
    return [(follower, followee, at) for follower, followee in pairs]


@pytest_asyncio.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    tmp: Path = tmp_path_factory.mktemp("abuse")
    settings = isolated_settings(tmp)
    await asyncio.to_thread(apply_postgres, settings)
    await create_topics_async(settings, partitions=settings.topic_partitions)
    try:
        yield settings
    finally:
        await asyncio.to_thread(drop, settings)


def address() -> str:
    """A client address of this test alone (198.18.0.0/15 is for benchmarks, never routed)."""
    return f"198.{18 + secrets.randbelow(2)}.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}"


@asynccontextmanager
async def running(create: Any, settings: Settings, **kwargs: Any) -> AsyncIterator[Any]:
    app = create(settings, **kwargs)
    async with app.router.lifespan_context(app):
        yield app


def client(app: Any, addr: str, base: str = "http://post") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(addr, 40_000)), base_url=base)


async def pg(settings: Settings, sql: str, params: Any = None, *, many: bool = False) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(
        settings.postgres_dsn, autocommit=True, **settings.postgres_kwargs()
    ) as conn:
        async with conn.cursor() as cur:
            if many:
                await cur.executemany(sql, params)
                return []
            await cur.execute(sql, params)
            return await cur.fetchall() if cur.description else []


async def make_users(settings: Settings, n: int) -> list[tuple[int, str]]:
    """Accounts (user id, token) straight in PostgreSQL ``users``, as sign-up leaves them."""
    users = [(10**15 + secrets.randbelow(10**15), new_token()) for _ in range(n)]
    await pg(settings, "INSERT INTO users (user_id, handle, token_hash) VALUES (%s, %s, %s)",
             [(u, unique_handle("a"), hash_token(t)) for u, t in users], many=True)
    return users


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def metric(app: Any, name: str, **labels: str) -> float:
    return app.state.metrics.registry.get_sample_value(name, labels) or 0.0


def assert_429(resp: httpx.Response, detail: str) -> int:
    body = assert_problem(resp, 429, detail)
    assert body["type"].endswith("/rate-limited")
    wait = int(resp.headers["retry-after"])
    assert wait >= 1
    assert f"retry in {wait} s" in body["detail"]
    return wait


def assert_no_5xx(app: Any, service: str) -> None:
    registry = app.state.metrics.registry
    fives = [s for m in registry.collect() if m.name == f"{service}_http_requests"
             for s in m.samples if s.name.endswith("_total") and s.labels["status"].startswith("5") and s.value]
    assert not fives, fives


async def users_table_scans(settings: Settings) -> int:
    """Scans of the world's ``users`` table PostgreSQL has recorded (its statistics)."""
    rows = await pg(settings, "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                              "WHERE schemaname = %s AND relname = 'users'", (settings.postgres_schema,))
    return int(rows[0][0])


async def scans_after(settings: Settings, before: int, expected: int) -> int:
    """The scans since ``before`` once the statistics settled (backends flush them when their
    connection closes; wait until the count reaches ``expected`` and stays)."""
    deadline = time.monotonic() + 15
    last = -1
    while True:
        now = await users_table_scans(settings) - before
        if now == last and (now >= expected or time.monotonic() > deadline):
            return now
        last = now
        await asyncio.sleep(0.3)


# --- sign-up ---------------------------------------------------------------------------------


async def test_signup_burst_from_one_address_is_429(world: Settings):
    settings = world.replace(signup_rate_burst=3, signup_rate_per_s=0.01)
    a, b = address(), address()
    async with running(create_post_app, settings) as app, client(app, a) as ca, client(app, b) as cb:
        ok = [await ca.post("/v1/users", json={"handle": unique_handle("s")}) for _ in range(3)]
        assert [r.status_code for r in ok] == [201, 201, 201], [r.text for r in ok]
        refused_handle = unique_handle("s")
        resp = await ca.post("/v1/users", json={"handle": refused_handle})
        wait = assert_429(resp, "rate limit exceeded: at most 3 sign-ups from one address at once, "
                                "refilled at 0.01 per second; retry in ")
        assert 90 <= wait <= 100  # one sign-up at 0.01/s
        # A bad request still gets its own answer (it is refused before the limit is spent).
        assert_problem(await ca.post("/v1/users", json={"handle": "bad handle"}), 422, "handle breaks rule")
        # Another address has a bucket of its own.
        assert (await cb.post("/v1/users", json={"handle": unique_handle("s")})).status_code == 201
        assert metric(app, "post_rate_limited_total", limit="signup") == 1
        assert_no_5xx(app, "post")
    assert await pg(world, "SELECT count(*) FROM users WHERE handle = %s", (refused_handle,)) == [(0,)]
    ids = {int(r.json()["user_id"]) for r in ok}
    activity = [e.user_id for _, e in await events_on(world, world.topic_activity)]
    assert ids <= set(activity)


# --- follow and unfollow ---------------------------------------------------------------------


async def test_follow_and_unfollow_burst_is_429_per_user(world: Settings):
    settings = world.replace(follow_rate_burst=4, follow_rate_per_s=0.01)
    (me, token), (other, other_token), *targets = await make_users(world, 6)
    t = [str(u) for u, _ in targets]
    async with running(create_post_app, settings) as app, client(app, address()) as c:
        async def follow(who: int, tok: str, target: str) -> httpx.Response:
            return await c.post(f"/v1/users/{who}/following", json={"target_user_id": target}, headers=bearer(tok))

        async def unfollow(who: int, tok: str, target: str) -> httpx.Response:
            return await c.delete(f"/v1/users/{who}/following/{target}", headers=bearer(tok))

        statuses = [(await follow(me, token, t[0])).status_code, (await follow(me, token, t[1])).status_code,
                    (await unfollow(me, token, t[0])).status_code, (await follow(me, token, t[2])).status_code]
        assert statuses == [200, 200, 200, 200]
        detail = "rate limit exceeded: at most 4 follows and unfollows at once, refilled at 0.01 per second; retry in "
        assert_429(await follow(me, token, t[3]), detail)
        assert_429(await unfollow(me, token, t[1]), detail)
        # Requests refused for being malformed do not reach the limit and say what is wrong.
        assert_problem(await follow(me, token, str(me)), 422, "you cannot follow or unfollow yourself")
        # Another user is not limited by my burst.
        assert (await follow(other, other_token, t[3])).status_code == 200
        assert metric(app, "post_rate_limited_total", limit="follow") == 2
        assert_no_5xx(app, "post")
    mine = [e for _, e in await events_on(world, world.topic_follows, follower_id=me)]
    assert sorted((e.TYPE, e.followee_id) for e in mine) == sorted([  # keyed by followee: partitions differ
        ("followed", targets[0][0]), ("followed", targets[1][0]), ("unfollowed", targets[0][0]),
        ("followed", targets[2][0])])


# --- the following cap -------------------------------------------------------------------------


async def test_following_cap_is_409_at_cap_plus_one(world: Settings):
    settings = world.replace(max_following=3)
    (me, token), *targets = await make_users(world, 6)
    t = [str(u) for u, _ in targets]
    async with running(create_post_app, settings) as app, client(app, address()) as c:
        async def follow(target: str) -> httpx.Response:
            return await c.post(f"/v1/users/{me}/following", json={"target_user_id": target}, headers=bearer(token))

        assert [(await follow(x)).status_code for x in t[:3]] == [200, 200, 200]
        body = assert_problem(await follow(t[3]), 409, "you already follow 3 accounts, the most allowed is 3; "
                              "unfollow an account before following another", exact=True)
        assert body["type"].endswith("/following-limit")
        assert (body["limit"], body["following"]) == (3, 3)
        # Following someone already followed is harmless, and unfollowing frees a slot at once
        # (the projection has not seen any of these follows: no worker runs here).
        assert (await follow(t[0])).status_code == 200
        assert (await c.delete(f"/v1/users/{me}/following/{t[1]}", headers=bearer(token))).status_code == 200
        assert (await follow(t[3])).status_code == 200
        assert_problem(await follow(t[4]), 409, "you already follow 3 accounts")
        assert metric(app, "post_following_cap_total") == 2
        assert_no_5xx(app, "post")
    events = [(e.TYPE, e.followee_id) for _, e in await events_on(world, world.topic_follows, follower_id=me)]
    assert ("followed", targets[4][0]) not in events
    assert events.count(("followed", targets[3][0])) == 1


async def test_default_cap_counts_the_projection(world: Settings):
    """5,000 follows already projected: the 5,001st account is refused with the default cap."""
    assert world.max_following == 5_000
    (me, token), (target, _) = await make_users(world, 2)
    followees = [10**17 + i for i in range(5_000)]
    await pg(world, PROJECT_FOLLOW, projected([(me, f) for f in followees]), many=True)
    async with running(create_post_app, world) as app, client(app, address()) as c:
        resp = await c.post(f"/v1/users/{me}/following", json={"target_user_id": str(target)}, headers=bearer(token))
        assert_problem(resp, 409, "you already follow 5000 accounts, the most allowed is 5000; "
                       "unfollow an account before following another", exact=True)
        # Unfollowing one of the projected accounts makes room before the projection applies it.
        resp = await c.delete(f"/v1/users/{me}/following/{target}", headers=bearer(token))
        assert resp.status_code == 200  # (the target itself is not followed: harmless)
        assert_problem(await c.post(f"/v1/users/{me}/following", json={"target_user_id": str(target)},
                                    headers=bearer(token)), 409, "you already follow 5000 accounts")
        await pg(world, "INSERT INTO users (user_id, handle, token_hash) VALUES (%s, %s, %s)",
                 (followees[0], unique_handle("p"), hash_token(new_token())))
        resp = await c.delete(f"/v1/users/{me}/following/{followees[0]}", headers=bearer(token))
        assert resp.status_code == 200, resp.text
        resp = await c.post(f"/v1/users/{me}/following", json={"target_user_id": str(target)}, headers=bearer(token))
        assert resp.status_code == 200, resp.text
        assert_no_5xx(app, "post")


async def test_concurrent_follows_at_the_cap_admit_exactly_one(world: Settings):
    settings = world.replace(max_following=5)
    (me, token), *targets = await make_users(world, 13)
    await pg(world, PROJECT_FOLLOW, projected([(me, 10**17 + i) for i in range(4)]), many=True)
    async with running(create_post_app, settings) as app, client(app, address()) as c:
        responses = await asyncio.gather(*(
            c.post(f"/v1/users/{me}/following", json={"target_user_id": str(u)}, headers=bearer(token))
            for u, _ in targets))
        assert sorted(r.status_code for r in responses) == [200] + [409] * 11, [r.text for r in responses]
        assert_no_5xx(app, "post")
    followed = [e for _, e in await events_on(world, world.topic_follows, follower_id=me)]
    assert len(followed) == 1


async def test_cap_count_agrees_with_the_definition(world: Settings):
    """The SQL count (post.follow_cap) equals policies.following.effective_following on random
    projections and intents, expired intents included."""
    from post.follow_cap import FollowCap

    rng = secrets.SystemRandom()
    me = 10**15 + secrets.randbelow(10**15)
    pool = [10**17 + i for i in range(40)]
    in_projection = set(rng.sample(pool, 20))
    intents = {f: rng.random() < 0.5 for f in rng.sample(pool, 25)}
    expired = {f: rng.random() < 0.5 for f in rng.sample([f for f in pool if f not in intents], 8)}
    await pg(world, PROJECT_FOLLOW, projected([(me, f) for f in in_projection]), many=True)
    await pg(world, "INSERT INTO follow_intents (follower_id, followee_id, following, accepted_at) "
                    "VALUES (%s, %s, %s, now() - make_interval(secs => %s))",
             [(me, f, v, 5) for f, v in intents.items()]
             + [(me, f, v, FOLLOW_INTENT_TTL_S + 60) for f, v in expired.items()], many=True)
    expected = effective_following(in_projection, intents)

    @asynccontextmanager
    async def conn() -> AsyncIterator[Any]:
        async with await psycopg.AsyncConnection.connect(world.postgres_dsn, autocommit=True,
                                                         **world.postgres_kwargs()) as c:
            yield c

    cap = FollowCap(conn, 10_000)
    for target in pool:
        assert await cap.count(me, target) == (len(expected), target in expected), target


async def test_follow_refused_by_kafka_leaves_no_intent(world: Settings):
    (me, token), (target, _) = await make_users(world, 2)
    broken = world.replace(kafka_bootstrap="127.0.0.1:1")
    async with running(create_post_app, broken, kafka_timeout_s=1.0) as app, client(app, address()) as c:
        resp = await c.post(f"/v1/users/{me}/following", json={"target_user_id": str(target)}, headers=bearer(token))
        assert_problem(resp, 503, "the event log is unavailable, nothing was accepted")
    assert await pg(world, "SELECT count(*) FROM follow_intents WHERE follower_id = %s", (me,)) == [(0,)]


# --- garbage tokens ----------------------------------------------------------------------------


async def _flood(c: httpx.AsyncClient, method: str, url: str, tokens: list[str], **kwargs: Any) -> list[httpx.Response]:
    out: list[httpx.Response] = []
    for i in range(0, len(tokens), 50):
        out += await asyncio.gather(*(c.request(method, url, headers=bearer(t), **kwargs) for t in tokens[i:i + 50]))
    return out


@pytest.mark.parametrize("service", ["post", "query"])
async def test_garbage_tokens_get_401_and_bounded_postgres_lookups(world: Settings, service: str):
    burst, rate = 20, 2.0
    settings = world.replace(token_lookup_rate_burst=burst, token_lookup_rate_per_s=rate)
    (me, token), (fresh, fresh_token) = await make_users(world, 2)
    if service == "post":
        create, base = create_post_app, "http://post"
        method, url, kwargs = "POST", "/v1/tweets", {"json": {"text": "hi"}}
        valid = lambda uid: ("DELETE", f"/v1/tweets/{10**18}")  # noqa: E731 - authenticated, then 404
        valid_status = 404
    else:
        create, base = create_query_app, "http://query"
        method, url, kwargs = "GET", f"/v1/users/{me}/tweets", {}
        valid = lambda uid: ("GET", f"/v1/users/{uid}/timelines/home?limit=abc")  # noqa: E731 - then 422
        valid_status = 422
    attacker, neighbour = address(), address()
    garbage = [secrets.token_urlsafe(32) for _ in range(600)]
    repeated = [secrets.token_urlsafe(32)] * 200
    before = await users_table_scans(world)
    started = time.monotonic()
    async with running(create, settings) as app, client(app, attacker, base) as evil, \
            client(app, neighbour, base) as good:
        # A user on the attacker's address authenticated before the flood: cached, unaffected.
        assert (await evil.request(*valid(me), headers=bearer(token))).status_code == valid_status
        responses = await _flood(evil, method, url, garbage, **kwargs)
        responses += await _flood(evil, method, url, repeated, **kwargs)
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {401, 429}, set(statuses)
        for r in responses:
            if r.status_code == 401:
                assert_problem(r, 401, "bearer token is not valid", exact=True)
            else:
                assert_429(r, f"too many requests with tokens this service has not seen yet from your address: "
                              f"at most {burst} at once, refilled at {rate:g} per second; retry in ")
        # The burst (less the one lookup of my token) was looked up and refused with 401; the rest
        # of the flood mostly never reached PostgreSQL.
        assert statuses.count(401) >= burst - 1
        assert statuses.count(429) >= 600 - burst - rate * (time.monotonic() - started) - 1
        assert (await evil.request(*valid(me), headers=bearer(token))).status_code == valid_status
        # Another address, with a token never seen: looked up as usual.
        assert (await good.request(*valid(fresh), headers=bearer(fresh_token))).status_code == valid_status
        elapsed = time.monotonic() - started
        lookups = app.state.resources.auth.lookups
        redis_failures = metric(app, f"{service}_rate_limit_unavailable_total", limit="token_lookup")
        redis_error = app.state.resources.auth.limiter.last_error
        assert metric(app, f"{service}_authentications_total", outcome="limited") == statuses.count(429)
        if service == "post":
            assert metric(app, "post_rate_limited_total", limit="token_lookup") == statuses.count(429)
        assert_no_5xx(app, service)
    bound = burst + rate * elapsed
    if redis_failures:
        # Redis did not answer some checks (a loaded machine, another test's fault injection):
        # the process's in-process bucket admitted its own burst meanwhile (docs/operations.md).
        bound *= 2
    bound += 1 + 1  # me before the flood, and the neighbour
    scans = await scans_after(world, before, lookups)
    assert scans == lookups, (scans, lookups)
    assert lookups <= bound, (lookups, bound, elapsed, redis_failures, redis_error)
    # The garbage really was looked up until the limit: the burst less my token's lookup (more if
    # the bucket refilled during the flood), my token, the neighbour's.
    assert lookups >= (burst - 1) + 1 + 1


# --- Redis down, proxies ---------------------------------------------------------------------


async def test_without_redis_limits_fail_open_and_token_lookups_stay_bounded(world: Settings):
    settings = world.replace(
        redis_url="redis://127.0.0.1:1/0", snowflake_worker_id=1017,  # a fixed id: no lease from Redis
        signup_rate_burst=1, signup_rate_per_s=0.01, follow_rate_burst=1, follow_rate_per_s=0.01,
        token_lookup_rate_burst=5, token_lookup_rate_per_s=0.01)
    (me, token), *targets = await make_users(world, 3)
    async with running(create_post_app, settings) as app, client(app, address()) as c:
        signups = [await c.post("/v1/users", json={"handle": unique_handle("r")}) for _ in range(3)]
        assert [r.status_code for r in signups] == [201] * 3, [r.text for r in signups]
        follows = [await c.post(f"/v1/users/{me}/following", json={"target_user_id": str(u)}, headers=bearer(token))
                   for u, _ in targets]
        assert [r.status_code for r in follows] == [200, 200], [r.text for r in follows]
        # The token-lookup limit falls back to the process's own buckets (my token took one).
        garbage = await _flood(c, "POST", "/v1/tweets", [secrets.token_urlsafe(32) for _ in range(50)],
                               json={"text": "x"})
        assert sorted(r.status_code for r in garbage) == [401] * 4 + [429] * 46
        assert app.state.resources.auth.lookups == 1 + 4
        assert metric(app, "post_rate_limit_unavailable_total", limit="signup") >= 1
        assert metric(app, "post_rate_limit_unavailable_total", limit="token_lookup") >= 1
        assert metric(app, "post_rate_limited_total", limit="signup") == 0
        assert_no_5xx(app, "post")


async def test_trusted_proxies_key_limits_by_the_forwarded_client(world: Settings):
    settings = world.replace(trusted_proxies=("10.0.0.0/8",), signup_rate_burst=1, signup_rate_per_s=0.01)
    one, two, forged = address(), address(), address()
    untrusted = address()
    async with running(create_post_app, settings) as app, client(app, "10.20.30.40") as proxy, \
            client(app, untrusted) as direct:
        async def signup(via: httpx.AsyncClient, forwarded: str | None) -> int:
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            return (await via.post("/v1/users", json={"handle": unique_handle("x")}, headers=headers)).status_code

        assert await signup(proxy, one) == 201
        assert await signup(proxy, one) == 429
        assert await signup(proxy, f"{forged}, {two}") == 201  # the client is what the proxy appended
        assert await signup(proxy, f"{two}, 10.9.9.9") == 429  # behind a second trusted proxy: still two
        # X-Forwarded-For from a peer that is not a trusted proxy is not believed.
        assert await signup(direct, forged) == 201
        assert await signup(direct, address()) == 429
        assert_no_5xx(app, "post")
