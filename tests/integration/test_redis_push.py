"""Pushes into cached timelines on a real Redis: several users per script call write exactly
what one call per user (a cluster's way) writes, and what the cache's rules say
(``sinks/redis_timeline.py``): only timelines that are cached take entries, each keeps its
sentinel and its newest ``cap`` entries, and every pushed user's version changes."""
from __future__ import annotations

import random

from redis.asyncio import Redis

from sinks.redis_timeline import RedisTimelines, member
from tests.integration.pipeline_harness import isolated_settings

CAP = 6
USERS = range(1, 30)


async def test_many_users_per_call_write_what_a_call_per_user_writes(tmp_path) -> None:
    """Joined (one Redis: ids and members in one argument per call, keys derived in the script)
    against a call per user with its keys declared (a cluster's way)."""
    settings = isolated_settings(tmp_path)
    redis = Redis.from_url(settings.redis_url)
    many = RedisTimelines(redis, prefix=settings.redis_prefix + "many:", cap=CAP, ttl_s=60)
    many.push_users, many.push_members = 3, 12  # several calls per pipeline, cut by users and by members
    one = RedisTimelines(redis, prefix=settings.redis_prefix + "one:", cap=CAP, ttl_s=60)
    one.push_users, one.joined = 1, False
    assert many.joined
    rng = random.Random(5)
    model: dict[int, set[str]] = {}  # cached users' entries
    versions: dict[int, bytes | None] = {}
    try:
        for _ in range(60):
            users = rng.sample(USERS, rng.randint(1, 12))
            for u in users:
                if u not in model and rng.random() < 0.3:  # a reader cached it (sentinel, floor 0)
                    model[u] = set()
                    for t in (many, one):
                        await redis.zadd(t.key(u), {member(0, 0): 0})
            adds = {u: [(rng.randint(1, 500), rng.randint(1, 9)) for _ in range(rng.randint(1, 8))] for u in users}
            await many.push_many(adds)
            await one.push_many(adds)
            for u, entries in adds.items():
                if u in model:
                    model[u] = set(sorted(model[u] | {member(t, a) for t, a in entries})[-CAP:])
                new = await redis.get(many.version_key(u))
                assert new is not None and new != versions.get(u), f"user {u}'s version did not change"
                versions[u] = new
        for u in USERS:
            got = [m.decode() for m in await redis.zrange(many.key(u), 0, -1)]
            assert got == [m.decode() for m in await redis.zrange(one.key(u), 0, -1)], u
            want = [member(0, 0), *sorted(model[u])] if u in model else []
            assert got == want, u
        assert any(len(m) == CAP for m in model.values()), "some timelines were trimmed to the cap"
        assert len(model) < len(USERS), "some users had no cached timeline"
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_a_fill_caches_every_member_once_and_only_at_the_version_it_read(tmp_path) -> None:
    """A fill sends its members as one joined argument (``MEMBER_SEP``): all of them arrive (more
    than one ZADD's worth, 512), the sentinel first; a fill whose version is stale writes nothing."""
    settings = isolated_settings(tmp_path)
    redis = Redis.from_url(settings.redis_url)
    timelines = RedisTimelines(redis, prefix=settings.redis_prefix, cap=800, ttl_s=60)
    entries = [(10**18 + i, 7 + i % 13) for i in range(900, 0, -1)]  # newest first, more than cap
    try:
        await redis.set(timelines.version_key(1), "seen")
        assert await timelines.fill(1, "seen", entries, floor=42)
        got = [m.decode() for m in await redis.zrange(timelines.key(1), 0, -1)]
        assert got == [member(0, 42), *sorted(member(t, a) for t, a in entries[:800])]
        assert await redis.ttl(timelines.key(1)) > 0
        assert not await timelines.fill(2, "seen", entries, floor=0)  # no version: a reader never saw it
        await redis.set(timelines.version_key(1), "bumped")
        assert not await timelines.fill(1, "seen", entries[:3], floor=0)
        assert await redis.zcard(timelines.key(1)) == 801
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
