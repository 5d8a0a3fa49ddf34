"""The query service end to end: events on Kafka -> real worker -> Redis/Cassandra -> HTTP.

One isolated world for the module (own topics, keyspace, Redis prefix, a real Faust
worker subprocess) with small policy numbers - celebrity at 3 followers, timelines
capped at 12, backfills of 6, inactive after a day - so every read path shows up
with a few hundred events. Each test makes its own users (random ids; readers get a
bearer token in PostgreSQL ``users``, removed at the end), publishes its events,
waits until the pipeline caught up, and compares what the app answers (through
``httpx.ASGITransport``, lifespan run explicitly) with the reference computed
from the log alone (``policies.reference``).
"""
from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from api.auth import hash_token, new_token
from localenv.worker import Worker
from localenv.workload import produce
from ops.lag import wait_caught_up
from policies.reference import reference_home_timeline
from policies.snowflake import SnowflakeGenerator
from policies.timeline import decode_cursor, encode_cursor
from query.service import create_app
from settings import Settings
from sinks.redis_timeline import member
from tests.integration.pipeline_harness import drop, isolated_settings, provision
from tests.integration.post_fixtures import assert_problem, delete_topics, events_on

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY_MS = 24 * 3600 * 1000
CAP = 12


# --- the world ---------------------------------------------------------------------------


def followed(follower: int, followee: int, at: int) -> dict:
    return {"type": "followed", "follower_id": follower, "followee_id": followee, "at": at}


@dataclass
class User:
    user_id: int
    handle: str | None = None
    token: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        assert self.token is not None, "this user has no account"
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class World:
    settings: Settings
    worker: Worker
    client: httpx.AsyncClient
    app: Any
    redis: Redis
    log: list[dict] = field(default_factory=list)
    accounts: list[int] = field(default_factory=list)
    clock_ms: int = 0
    ids: SnowflakeGenerator = field(init=False)

    def __post_init__(self) -> None:
        # Tweet ids follow the world's event clock (as the Post service's follow the wall clock).
        self.ids = SnowflakeGenerator(worker_id=11, clock=lambda: self.clock_ms)

    # --- users and events ---
    async def user(self, *, account: bool = True) -> User:
        """A fresh user id; with ``account``, a row in PostgreSQL ``users`` (handle, token)."""
        user = User(10**15 + secrets.randbelow(10**15))
        if account:
            user.handle, user.token = f"q_{uuid.uuid4().hex[:20]}", new_token()
            async with self.app.state.resources.pg_conn() as conn:
                await conn.execute(
                    "INSERT INTO users (user_id, handle, token_hash) VALUES (%s, %s, %s)",
                    (user.user_id, user.handle, hash_token(user.token)),
                )
            self.accounts.append(user.user_id)
        return user

    def tick(self, ms: int = 1000) -> int:
        self.clock_ms += ms
        return self.clock_ms

    def tweet(self, author: int | User) -> dict:
        author_id = author.user_id if isinstance(author, User) else author
        tid = self.ids.next_id()
        return {"type": "tweet_posted", "tweet_id": tid, "author_id": author_id,
                "text": f"tweet {tid} by {author_id}", "created_at": self.tick()}

    def deleted(self, tweet: dict) -> dict:
        return {"type": "tweet_deleted", "tweet_id": tweet["tweet_id"], "author_id": tweet["author_id"],
                "deleted_at": self.tick()}

    async def publish(self, events: list[dict]) -> None:
        await produce(self.settings, events)
        self.log.extend(events)
        await self.caught_up()

    async def caught_up(self) -> None:
        try:
            await wait_caught_up(self.settings, timeout=300, check=self.worker.check)
        except TimeoutError:
            pytest.fail(f"pipeline did not catch up\n{self.worker.log_tail()}")

    def reference(self, user: User) -> list[int]:
        return reference_home_timeline(self.log, user.user_id)

    # --- the app ---
    async def home(self, user: User, **params: Any) -> httpx.Response:
        return await self.client.get(f"/v1/users/{user.user_id}/timelines/home", params=params, headers=user.auth)

    async def home_page(self, user: User, **params: Any) -> dict:
        resp = await self.home(user, **params)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/json"
        return resp.json()

    async def home_all(self, user: User, limit: int) -> tuple[list[int], list[dict]]:
        """Every id, paging with ``next_cursor`` to the end; and the pages' meta."""
        ids: list[int] = []
        metas: list[dict] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            body = await self.home_page(user, **params)
            ids.extend(int(t["tweet_id"]) for t in body["data"])
            metas.append(body["meta"])
            assert len(metas) < 200, "paging does not end"
            cursor = body["meta"]["next_cursor"]
            if cursor is None:
                return ids, metas

    def metric(self, name: str, **labels: str) -> float:
        return self.app.state.metrics.registry.get_sample_value(name, labels) or 0.0

    async def cql(self, name: str, *params: Any) -> list:
        return await self.app.state.resources.cassandra.get().execute(name, params)


def ids_of(body: dict) -> list[int]:
    return [int(t["tweet_id"]) for t in body["data"]]


@pytest_asyncio.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("query")
    settings = isolated_settings(
        tmp, celebrity_threshold=3, celebrity_hysteresis=1, timeline_cap=CAP, backfill_limit=6,
        inactive_after_ms=DAY_MS,
    )
    await asyncio.to_thread(provision, settings)
    worker = Worker(settings, tmp / "worker.log").start()
    app = create_app(settings)
    redis = Redis.from_url(settings.redis_url)
    start = time.time_ns() // 1_000_000 - 20 * DAY_MS  # event time runs behind the wall clock
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
                w = World(settings, worker, client, app, redis, clock_ms=start)
                yield w
                if w.accounts:
                    async with app.state.resources.pg_conn() as conn:
                        await conn.execute("DELETE FROM users WHERE user_id = ANY(%s)", (w.accounts,))
    finally:
        worker.stop()
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*", count=1000)]
        if keys:
            await redis.unlink(*keys)
        await redis.aclose()
        await asyncio.to_thread(drop, settings)
        try:
            await delete_topics(settings)
        except Exception:  # noqa: BLE001 - leftover test topics are harmless
            pass


async def _simple_world(w: World, authors: int, tweets_each: int, *, handles: int | None = None) -> tuple[User, list[User]]:
    """A reader following ``authors`` authors (the first ``handles`` with accounts), then their tweets."""
    reader = await w.user()
    with_handles = authors if handles is None else handles
    people = [await w.user(account=i < with_handles) for i in range(authors)]
    events = [followed(reader.user_id, a.user_id, w.tick()) for a in people]
    events += [w.tweet(people[i % authors]) for i in range(authors * tweets_each)]
    await w.publish(events)
    return reader, people


# --- read paths ----------------------------------------------------------------------------


async def test_cache_hit_is_redis_only(world: World):
    reader, authors = await _simple_world(world, 3, 8, handles=2)  # 24 tweets, the last author has no account
    want = world.reference(reader)
    assert len(want) == 24

    first = await world.home_page(reader, limit=10)  # fills the cache
    assert ids_of(first) == want[:10]
    assert first["meta"]["source"] == "store"

    queries = world.metric("timeline_store_queries_total", timeline="home")
    trips = world.metric("timeline_redis_round_trips_total", timeline="home")
    hits = world.metric("timeline_cache_lookups_total", cache="timeline", result="hit")
    body = await world.home_page(reader, limit=10)
    assert ids_of(body) == want[:10]
    assert body["meta"]["source"] == "cache"
    assert body["meta"]["result_count"] == 10
    assert decode_cursor(body["meta"]["next_cursor"]) == want[9]
    # A hit is one reader round trip (rate limit, window, following, celebrities and the
    # window's tweet bodies in one script), no Cassandra.
    assert world.metric("timeline_store_queries_total", timeline="home") == queries
    assert world.metric("timeline_redis_round_trips_total", timeline="home") - trips == 1
    assert world.metric("timeline_cache_lookups_total", cache="timeline", result="hit") == hits + 1

    by_id = {e["tweet_id"]: e for e in world.log if e["type"] == "tweet_posted"}
    handles = {a.user_id: a.handle for a in authors}
    for item in body["data"]:
        event = by_id[int(item["tweet_id"])]
        assert set(item) == {"tweet_id", "author_id", "author_handle", "text", "created_at"}
        assert item["author_id"] == str(event["author_id"])
        assert item["author_handle"] == handles[event["author_id"]]  # None for the author without account
        assert item["text"] == event["text"]
        ms = event["created_at"]
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        assert item["created_at"] == expected
    assert any(item["author_handle"] is None for item in body["data"])

    ids, metas = await world.home_all(reader, limit=10)
    assert ids == want
    assert metas[-1]["next_cursor"] is None


async def test_cache_miss_reads_store_and_refills(world: World):
    reader, _ = await _simple_world(world, 2, 5)
    want = world.reference(reader)
    assert (await world.home_page(reader, limit=6))["meta"]["source"] == "store"
    assert (await world.home_page(reader, limit=6))["meta"]["source"] == "cache"

    res = world.app.state.resources
    await world.redis.delete(res.timelines.key(reader.user_id), res.following.key(reader.user_id))
    # Tweet bodies missing from Redis come from Cassandra in one query, and are cached again.
    gone = want[:3]
    await world.redis.delete(*(res.tweets.key(t) for t in gone))
    misses = world.metric("timeline_cache_lookups_total", cache="timeline", result="miss")
    following_misses = world.metric("timeline_cache_lookups_total", cache="following", result="miss")
    tweet_misses = world.metric("timeline_cache_lookups_total", cache="tweet", result="miss")
    queries = world.metric("timeline_store_queries_total", timeline="home")

    body = await world.home_page(reader, limit=6)
    assert ids_of(body) == want[:6]
    assert body["meta"]["source"] == "store"
    assert world.metric("timeline_cache_lookups_total", cache="timeline", result="miss") == misses + 1
    assert world.metric("timeline_cache_lookups_total", cache="following", result="miss") == following_misses + 1
    assert world.metric("timeline_cache_lookups_total", cache="tweet", result="miss") == tweet_misses + 3
    # following + meta + timeline rows (concurrent), then one IN query for the 3 bodies.
    assert world.metric("timeline_store_queries_total", timeline="home") - queries == 4
    assert await world.redis.exists(*(res.tweets.key(t) for t in gone)) == 3

    again = await world.home_page(reader, limit=6)
    assert again["meta"]["source"] == "cache" and ids_of(again) == want[:6]

    # Only the timeline missing: meta and rows from Cassandra (concurrent); the follow check of
    # the page's authors and the page's bodies share a round trip; the refill comes after the
    # answer (not one of the read's round trips).
    await world.redis.delete(res.timelines.key(reader.user_id))
    queries = world.metric("timeline_store_queries_total", timeline="home")
    trips = world.metric("timeline_redis_round_trips_total", timeline="home")
    body = await world.home_page(reader, limit=6)
    assert body["meta"]["source"] == "store" and ids_of(body) == want[:6]
    assert world.metric("timeline_store_queries_total", timeline="home") - queries == 2
    assert world.metric("timeline_redis_round_trips_total", timeline="home") - trips == 2
    assert (await world.home_all(reader, limit=4))[0] == want


async def test_a_miss_answers_before_its_fill(world: World):
    """The HTTP read of a miss leaves the cache fill for after the answer (``Page.after``); a
    reader called in-process fills before it returns. Either way the next read is a hit."""
    reader, _ = await _simple_world(world, 2, 4)
    want = world.reference(reader)
    res = world.app.state.resources
    key = res.timelines.key(reader.user_id)
    assert (await world.home_page(reader, limit=5))["meta"]["source"] in ("store", "cache")

    await world.redis.delete(key)
    page = await res.reader().page(reader.user_id, limit=5, fill_later=True)
    assert [t.tweet_id for t in page.tweets] == want[:5] and page.source == "store"
    assert page.after is not None and await world.redis.exists(key) == 0, "filled before the answer"
    await page.after()
    assert await world.redis.exists(key) == 1
    hit = await res.reader().page(reader.user_id, limit=5, fill_later=True)
    assert hit.source == "cache" and hit.after is None and [t.tweet_id for t in hit.tweets] == want[:5]

    await world.redis.delete(key)
    page = await res.reader().page(reader.user_id, limit=5)
    assert page.source == "store" and page.after is None and await world.redis.exists(key) == 1

    # Over HTTP the fill runs after the body is sent, within the request (ASGI): then a hit.
    await world.redis.delete(key)
    assert (await world.home_page(reader, limit=5))["meta"]["source"] == "store"
    assert await world.redis.exists(key) == 1
    assert ids_of(await world.home_page(reader, limit=5)) == want[:5]


async def test_hybrid_merges_celebrity_pulls(world: World):
    reader = await world.user()
    celebs = [await world.user() for _ in range(2)]
    normal = [await world.user(account=False) for _ in range(2)]
    fans = [await world.user(account=False) for _ in range(3)]
    follows = [followed(reader.user_id, a.user_id, world.tick()) for a in celebs + normal]
    follows += [followed(f.user_id, c.user_id, world.tick()) for f in fans for c in celebs]
    await world.publish(follows)  # 4 followers each: both are celebrities from now on
    key = f"{world.settings.redis_prefix}celebrities"
    assert await world.redis.smismember(key, [c.user_id for c in celebs + normal]) == [1, 1, 0, 0]

    tweets = [world.tweet(a) for _ in range(5) for a in celebs + normal]
    await world.publish(tweets)
    want = world.reference(reader)
    assert len(want) == 20
    celeb_ids = {t["tweet_id"] for t in tweets if t["author_id"] in {c.user_id for c in celebs}}
    # Celebrity tweets were never pushed: they reach the reader only by pull.
    rows = await world.cql("user_tl_below", reader.user_id, 2**63 - 1, 0, 100)
    assert {r.tweet_id for r in rows}.isdisjoint(celeb_ids) and rows

    for expected_source in ("store", "cache"):
        body = await world.home_page(reader, limit=8)
        assert body["meta"]["source"] == expected_source
        assert ids_of(body) == want[:8]
        assert celeb_ids & set(ids_of(body))
    assert (await world.home_all(reader, limit=3))[0] == want

    # One celebrity's block of tweets above an older block of the other's: a page of 30
    # asks each author for fewer than 30 first, so it must stop at the first cut (the
    # horizon) and ask again rather than fill up with the older block.
    await world.publish([world.tweet(celebs[1]) for _ in range(30)] + [world.tweet(celebs[0]) for _ in range(30)])
    want = world.reference(reader)
    for limit in (30, 7):
        assert (await world.home_all(reader, limit=limit))[0] == want, f"limit {limit}"
    # The celebrity of a fan timeline with nothing materialized: pulls alone.
    fan_ids, _ = await world.home_all(User(fans[0].user_id, token=await _token_for(world, fans[0])), limit=4)
    assert fan_ids == reference_home_timeline(world.log, fans[0].user_id)


async def _token_for(w: World, user: User) -> str:
    token = new_token()
    async with w.app.state.resources.pg_conn() as conn:
        await conn.execute("INSERT INTO users (user_id, handle, token_hash) VALUES (%s, %s, %s)",
                           (user.user_id, f"q_{uuid.uuid4().hex[:20]}", hash_token(token)))
    w.accounts.append(user.user_id)
    return token


async def test_returning_user_gets_rebuilt_page_and_triggers_rebuild(world: World):
    reader = await world.user()
    authors = [await world.user(account=False) for _ in range(2)]
    began = world.tick()
    phase1 = [{"type": "user_active", "user_id": reader.user_id, "at": began}]
    phase1 += [followed(reader.user_id, a.user_id, world.tick()) for a in authors]
    phase1 += [world.tweet(authors[0]) for _ in range(3)]
    await world.publish(phase1)
    world.tick(2 * DAY_MS)  # the reader is now inactive: deliveries are skipped
    await world.publish([world.tweet(authors[i % 2]) for i in range(16)])
    meta = await world.cql("get_meta", reader.user_id)
    assert meta and meta[0].stale is True
    want = world.reference(reader)
    assert len(want) == 19

    t0 = time.time_ns() // 1_000_000
    body = await world.home_page(reader, limit=5)
    assert body["meta"]["source"] == "rebuilt"
    assert ids_of(body) == want[:5]

    async def activity() -> list:
        found = await events_on(world.settings, world.settings.topic_activity, user_id=reader.user_id)
        return [e for _, e in found if e.at >= t0]

    deadline = time.monotonic() + 60
    while not await activity():
        assert time.monotonic() < deadline, "no user_active event for the reader"
        await asyncio.sleep(0.5)
    await world.caught_up()
    deadline = time.monotonic() + 60
    while (await world.cql("get_meta", reader.user_id))[0].stale:
        assert time.monotonic() < deadline, "stage 2 did not rebuild the timeline"
        await asyncio.sleep(0.5)

    later = await world.home_page(reader, limit=5)
    assert later["meta"]["source"] != "rebuilt"
    assert ids_of(later) == want[:5]
    ids, metas = await world.home_all(reader, limit=5)
    assert ids == want
    assert all(m["source"] != "rebuilt" for m in metas)
    assert len(await activity()) == 1  # throttled: one event for all these reads


async def test_paging_past_the_cap_reaches_the_real_end(world: World):
    reader = await world.user()
    early, late = [await world.user(account=False) for _ in range(2)], await world.user(account=False)
    # ``late`` is followed first; the ``early`` authors post before they are followed, so
    # the follow backfills only their newest 6 and raises the reader's floor.
    events = [followed(reader.user_id, late.user_id, world.tick())]
    events += [world.tweet(early[i % 2]) for i in range(20)] + [world.tweet(late) for _ in range(5)]
    await world.publish(events)
    await world.publish([followed(reader.user_id, a.user_id, world.tick()) for a in early])
    await world.publish([world.tweet(a) for _ in range(5) for a in (*early, late)])
    want = world.reference(reader)
    assert len(want) == 40 > CAP
    meta = await world.cql("get_meta", reader.user_id)
    assert meta and meta[0].floor > 0  # part of the timeline is below the floor: pulled

    for limit in (7, 12, 200):
        ids, metas = await world.home_all(reader, limit=limit)
        assert ids == want, f"limit {limit}"
        assert all(m["result_count"] == limit for m in metas[:-1])
        assert metas[-1]["next_cursor"] is None


async def test_deleted_tweet_disappears_via_hydration(world: World):
    reader, authors = await _simple_world(world, 2, 6)
    want = world.reference(reader)
    body = await world.home_page(reader, limit=5)
    assert ids_of(body) == want[:5]
    victim = next(e for e in world.log if e["type"] == "tweet_posted" and e["tweet_id"] == want[1])

    await world.publish([world.deleted(victim)])
    want = world.reference(reader)
    assert victim["tweet_id"] not in want
    body = await world.home_page(reader, limit=5)
    assert ids_of(body) == want[:5]

    # Even while a delivery of the removal is still on its way (the id back in the cached
    # and stored timeline), hydration drops the deleted tweet.
    res = world.app.state.resources
    await world.redis.zadd(res.timelines.key(reader.user_id), {member(victim["tweet_id"], victim["author_id"]): 0})
    await world.cql("insert_user_tl", reader.user_id, victim["tweet_id"], victim["author_id"])
    body = await world.home_page(reader, limit=5)
    assert body["meta"]["source"] == "cache"
    assert ids_of(body) == want[:5]
    assert (await world.home_all(reader, limit=3))[0] == want
    # And the author's own timeline does not show it either.
    resp = await world.client.get(f"/v1/users/{victim['author_id']}/tweets")
    assert victim["tweet_id"] not in [int(t["tweet_id"]) for t in resp.json()["data"]]


async def test_pages_are_stable_when_new_tweets_arrive(world: World):
    reader, authors = await _simple_world(world, 2, 9)
    before = world.reference(reader)
    first = await world.home_page(reader, limit=6)
    assert ids_of(first) == before[:6]

    await world.publish([world.tweet(authors[i % 2]) for i in range(7)])
    after = world.reference(reader)
    assert len(after) == len(before) + 7 and after[7:] == before

    seen = ids_of(first)
    cursor = first["meta"]["next_cursor"]
    while cursor is not None:
        body = await world.home_page(reader, limit=6, cursor=cursor)
        seen.extend(ids_of(body))
        cursor = body["meta"]["next_cursor"]
    assert seen == before  # no duplicates, nothing skipped, nothing new in the middle
    assert ids_of(await world.home_page(reader, limit=6)) == after[:6]


async def test_author_tweets_are_public_and_paged(world: World):
    author = await world.user()
    posts = [world.tweet(author) for _ in range(9)]
    await world.publish(posts + [world.deleted(posts[4])])
    want = sorted((p["tweet_id"] for p in posts if p is not posts[4]), reverse=True)

    got: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        resp = await world.client.get(f"/v1/users/{author.user_id}/tweets", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert all(t["author_handle"] == author.handle for t in body["data"])
        got.extend(ids_of(body))
        cursor = body["meta"]["next_cursor"]
        if cursor is None:
            break
    assert got == want
    # With the author's own token it works too; a bad token is refused.
    assert (await world.client.get(f"/v1/users/{author.user_id}/tweets", headers=author.auth)).status_code == 200
    resp = await world.client.get(f"/v1/users/{author.user_id}/tweets",
                                  headers={"Authorization": "Bearer " + "x" * 43})
    assert_problem(resp, 401, "bearer token is not valid")


async def test_follow_changes_reach_the_cached_following_list(world: World):
    reader, (kept, dropped) = await _simple_world(world, 2, 4)
    newcomer = await world.user(account=False)
    await world.publish([world.tweet(newcomer) for _ in range(3)])
    assert ids_of(await world.home_page(reader, limit=20)) == world.reference(reader)
    body = await world.home_page(reader, limit=20)
    assert body["meta"]["source"] == "cache"  # timeline and following list are cached now
    misses = world.metric("timeline_cache_lookups_total", cache="following", result="miss")

    await world.publish([
        {"type": "unfollowed", "follower_id": reader.user_id, "followee_id": dropped.user_id, "at": world.tick()},
        followed(reader.user_id, newcomer.user_id, world.tick()),
    ])
    want = world.reference(reader)
    assert {e["author_id"] for e in world.log if e.get("tweet_id") in set(want)} == {kept.user_id, newcomer.user_id}
    assert ids_of(await world.home_page(reader, limit=20)) == want
    # Stage 2 dropped the cached list after writing Cassandra; the read refilled it.
    assert world.metric("timeline_cache_lookups_total", cache="following", result="miss") == misses + 1
    res = world.app.state.resources
    cached = await world.redis.smembers(res.following.key(reader.user_id))
    assert {int(m) for m in cached} == {0, kept.user_id, newcomer.user_id}


async def test_removal_from_a_full_cache_keeps_older_entries(world: World):
    reader, author = await world.user(), await world.user(account=False)
    await world.publish([followed(reader.user_id, author.user_id, world.tick())])
    await world.publish([world.tweet(author) for _ in range(CAP + 4)])  # all pushed, floor 0
    want = world.reference(reader)
    assert (await world.home_page(reader, limit=5))["meta"]["source"] == "store"  # fills CAP entries
    assert await world.redis.zcard(world.app.state.resources.timelines.key(reader.user_id)) == CAP + 1
    victim = next(e for e in world.log if e.get("tweet_id") == want[2] and e["type"] == "tweet_posted")
    await world.publish([world.deleted(victim)])
    ids, _ = await world.home_all(reader, limit=5)
    assert ids == world.reference(reader)


# --- bad input -------------------------------------------------------------------------------


async def test_bad_requests_are_problems(world: World):
    alice, bob = await world.user(), await world.user()
    home = f"/v1/users/{alice.user_id}/timelines/home"
    get = world.client.get

    assert_problem(await get(home), 401, "missing Authorization header")
    assert_problem(await get(home, headers={"Authorization": "Bearer " + "A" * 43}), 401, "not valid")
    assert_problem(await get(home, headers={"Authorization": "Basic dXNlcjpwdw=="}), 401, "not supported")
    resp = await get(home, headers={"Authorization": "Bearer"})
    assert_problem(resp, 401, "no token")
    assert resp.headers["www-authenticate"].startswith("Bearer")

    body = assert_problem(await get(home, headers=bob.auth), 403, f"authenticated as user {bob.user_id}")
    assert f"/v1/users/{bob.user_id}/timelines/home" in body["detail"]
    assert_problem(await get("/v1/users/abc/timelines/home", headers=alice.auth), 422, "user_id must be")
    assert_problem(await get("/v1/users/0/timelines/home", headers=alice.auth), 422, "user_id must be")

    for bad in ("0", "201", "-1", "ten", "", "1e2", " 5", "5" * 30):
        resp = await get(home, params={"limit": bad}, headers=alice.auth)
        assert_problem(resp, 422, "'limit' must be an integer from 1 to 200")
    assert_problem(await get(home + "?limit=5&limit=6", headers=alice.auth), 422, "given 2 times")

    good = encode_cursor(12345)
    tampered = good[:-1] + ("A" if good[-1] != "A" else "B")
    for bad in ("abc", "", tampered, "%%%", "x" * 100, encode_cursor(12345, b"other-key")):
        resp = await get(home, params={"cursor": bad}, headers=alice.auth)
        assert_problem(resp, 400, "'cursor' is not valid")
    assert_problem(await get(home, params=[("cursor", good), ("cursor", good)], headers=alice.auth),
                   400, "given 2 times")
    ok = await get(home, params={"cursor": good, "limit": "200"}, headers=alice.auth)
    assert ok.status_code == 200 and ok.json()["data"] == [] and ok.json()["meta"]["next_cursor"] is None

    assert_problem(await get(f"/v1/users/{alice.user_id}/tweets?limit=500"), 422, "'limit'")
    assert_problem(await get(f"/v1/users/{alice.user_id}/tweets?cursor=zz"), 400, "'cursor'")
    assert_problem(await get("/v1/users/-5/tweets"), 422, "user_id must be")
    assert_problem(await get("/v1/nothing"), 404, "no resource")
    assert_problem(await world.client.post(home, headers=alice.auth), 405, "not allowed")


async def test_reads_are_rate_limited_per_reader(world: World):
    reader, other = await world.user(), await world.user()
    limited = create_app(world.settings.replace(read_rate_burst=2, read_rate_per_s=0.01))
    async with limited.router.lifespan_context(limited):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited), base_url="http://query") as client:
            def home(user: User) -> Any:
                return client.get(f"/v1/users/{user.user_id}/timelines/home", headers=user.auth)

            assert [(await home(reader)).status_code for _ in range(2)] == [200, 200]
            resp = await home(reader)
            assert_problem(resp, 429, "at most 2 reads at once, refilled at 0.01 per second")
            assert 1 <= int(resp.headers["retry-after"]) <= 100
            assert (await home(other)).status_code == 200, "the limit is per reader"

            public = f"/v1/users/{reader.user_id}/tweets"
            assert [(await client.get(public)).status_code for _ in range(3)] == [200, 200, 429], (
                "anonymous reads are limited per client address"
            )
            assert (await client.get(public, headers=other.auth)).status_code == 200, "a reader has their own"
            registry = limited.state.metrics.registry
            assert registry.get_sample_value("query_rate_limited_total", {"timeline": "home"}) == 1
            assert registry.get_sample_value("query_rate_limited_total", {"timeline": "author"}) == 1


async def test_health_and_metrics(world: World):
    resp = await world.client.get("/healthz")
    assert resp.status_code == 200, resp.text
    checks = resp.json()["checks"]
    assert set(checks) == {"postgres", "redis", "cassandra", "kafka"}
    assert all(c["ok"] for c in checks.values())
    await world.home_page(await world.user())  # a read to count, so that this passes run alone too
    text = (await world.client.get("/metrics")).text
    for name in ("timeline_read_seconds_bucket", "timeline_cache_lookups_total", "query_http_requests_total",
                 "timeline_activity_events_total"):
        assert name in text
    # The collector's pauses while the app runs (gc_tuning), a full collection included.
    import gc

    registry = world.app.state.metrics.registry
    before = registry.get_sample_value("query_gc_pause_seconds_count", {"generation": "2"}) or 0
    gc.collect()
    assert registry.get_sample_value("query_gc_pause_seconds_count", {"generation": "2"}) == before + 1
