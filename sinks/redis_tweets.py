"""Tweet bodies cached in Redis, for one-round-trip hydration of id-only timelines.

``<prefix>tweet:<id>`` is a hash: ``a`` author id, ``t`` text, ``c`` created_at
(epoch ms), and ``d`` deleted_at once deleted. A delete only sets ``d``, so it
wins whatever order the post and the delete are applied in, and a replay of
either changes nothing. Entries expire; Cassandra's ``tweets`` table is the
durable copy that a miss falls back to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from redis.asyncio import Redis

TWEET_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class CachedTweet:
    tweet_id: int
    author_id: int
    text: str
    created_at: int
    deleted_at: int | None


class RedisTweets:
    def __init__(self, redis: Redis, *, prefix: str, ttl_s: int = TWEET_TTL_S) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s

    def key(self, tweet_id: int) -> str:
        return f"{self.prefix}tweet:{tweet_id}"

    async def write(self, posted: Iterable[tuple[int, int, str, int]], deleted: Iterable[tuple[int, int]]) -> None:
        """Cache posted tweets (id, author, text, created_at), then mark deletes (id, deleted_at)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tweet_id, author_id, text, created_at in posted:
                pipe.hset(self.key(tweet_id), mapping={"a": author_id, "t": text, "c": created_at})
                pipe.expire(self.key(tweet_id), self.ttl_s)
            for tweet_id, deleted_at in deleted:
                pipe.hset(self.key(tweet_id), "d", deleted_at)
                pipe.expire(self.key(tweet_id), self.ttl_s)
            await pipe.execute()

    async def read(self, tweet_ids: Sequence[int]) -> dict[int, CachedTweet | None]:
        """Cached state per id: a CachedTweet, or None for a miss (not cached, or only a delete mark)."""
        if not tweet_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for tweet_id in tweet_ids:
                pipe.hgetall(self.key(tweet_id))
            rows = await pipe.execute()
        out: dict[int, CachedTweet | None] = {}
        for tweet_id, row in zip(tweet_ids, rows):
            if not row:
                out[tweet_id] = None
                continue
            row = {k.decode(): v for k, v in row.items()}
            deleted = int(row["d"]) if "d" in row else None
            if "a" not in row:
                out[tweet_id] = CachedTweet(tweet_id, 0, "", 0, deleted) if deleted else None
                continue
            out[tweet_id] = CachedTweet(tweet_id, int(row["a"]), row["t"].decode(), int(row["c"]), deleted)
        return out
