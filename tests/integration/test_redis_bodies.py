"""Tweet bodies read and written on a real Redis (``sinks/redis_tweets.py``): a body is its
author and rendered tail, a delete mark wins over a post in either order and over a replay or a
reader's refill, a missing body reads as a miss and a value the cache did not write as one too;
the page rendered from cached bodies is the page rendered from the tweets' fields; a delete also
marks the hash a query service of the previous version reads."""
from __future__ import annotations

from redis.asyncio import Redis

from query.page import Tweet
from query.params import render_page_json
from schemas.tweet_json import render_tail
from sinks.redis_tweets import RedisTweets
from tests.integration.pipeline_harness import isolated_settings


async def test_bodies_deletes_and_misses(tmp_path) -> None:
    settings = isolated_settings(tmp_path)
    redis = Redis.from_url(settings.redis_url)
    tweets = RedisTweets(redis, prefix=settings.redis_prefix)
    try:
        await tweets.write([(1, 10, 'hello "world"', 1_700_000_000_000), (2, 20, "deleted later", 5)], [(2, 9), (3, 9)])
        await tweets.write([(3, 30, "posted after its delete", 6), (2, 20, "deleted later", 5)], [])  # replays, refills
        await redis.set(tweets.key(4), b"foreign value")
        got = await tweets.read([1, 2, 3, 4, 5])
        assert (got[1].author_id, got[1].deleted_at) == (10, None)
        assert got[1].rendered == render_tail('hello "world"', 1_700_000_000_000)
        assert (got[2].author_id, got[2].deleted_at, got[2].rendered) == (0, 9, None)  # the delete won
        assert (got[3].author_id, got[3].deleted_at) == (0, 9)  # ... whichever came first
        assert got[4] is None and got[5] is None  # not ours, not cached: misses (Cassandra answers)
        assert 0 < await redis.ttl(tweets.key(1)) <= tweets.ttl_s
        assert 0 < await redis.ttl(tweets.key(2)) <= tweets.ttl_s
        # The previous version's hash gets the delete mark too (its readers still run during an upgrade).
        assert await redis.hget(f"{settings.redis_prefix}tweet:2", "d") == b"9"

        page = render_page_json([Tweet(1, got[1].author_id, None, None, got[1].rendered)], {10: "ten"}, None, "cache")
        assert page == render_page_json([Tweet(1, 10, 'hello "world"', 1_700_000_000_000)], {10: "ten"}, None, "cache")
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
