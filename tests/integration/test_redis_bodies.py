"""Tweet bodies read on a real Redis (``sinks/redis_tweets.py``): a body with its rendered
tail is read without text and time (the tail holds both), one cached before tails existed is
read whole, a delete mark alone reads as a known delete, a missing body as a miss; what every
field gives (a cluster's pipeline) renders the same page."""
from __future__ import annotations

from redis.asyncio import Redis

from query.page import Tweet
from query.params import render_page_json
from schemas.tweet_json import render_tail
from sinks.redis_tweets import FIELDS, RedisTweets, parse_body
from tests.integration.pipeline_harness import isolated_settings


async def test_bodies_with_a_tail_are_read_without_text_and_time(tmp_path) -> None:
    settings = isolated_settings(tmp_path)
    redis = Redis.from_url(settings.redis_url)
    tweets = RedisTweets(redis, prefix=settings.redis_prefix)
    try:
        await tweets.write([(1, 10, 'hello "world"', 1_700_000_000_000), (2, 20, "deleted later", 5)], [(2, 9), (3, 9)])
        await redis.hset(tweets.key(4), mapping={"a": 40, "t": "before tails", "c": 7})  # no "r"
        got = await tweets.read([1, 2, 3, 4, 5])
        assert (got[1].author_id, got[1].text, got[1].created_at, got[1].deleted_at) == (10, None, None, None)
        assert got[1].rendered == render_tail('hello "world"', 1_700_000_000_000)
        assert got[2].author_id == 20 and got[2].deleted_at == 9 and got[2].rendered is not None
        assert got[3].deleted_at == 9 and got[3].author_id == 0  # a delete mark alone: the delete is known
        assert (got[4].text, got[4].created_at, got[4].rendered) == ("before tails", 7, None)
        assert got[5] is None
        whole = {t: parse_body(t, await redis.hmget(tweets.key(t), FIELDS)) for t in (1, 4)}
        assert (whole[1].text, whole[1].created_at) == ('hello "world"', 1_700_000_000_000)

        def page(bodies):
            return render_page_json([Tweet(t, b.author_id, b.text, b.created_at, b.rendered) for t, b in bodies.items()],
                                    {10: "ten"}, None, "cache")
        assert page({1: got[1], 4: got[4]}) == page(whole)
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
