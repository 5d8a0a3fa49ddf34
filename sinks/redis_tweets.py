"""Tweet bodies cached in Redis, for one-round-trip hydration of id-only timelines.

``<prefix>tweet:<id>`` is a hash: ``a`` author id, ``t`` text, ``c`` created_at
(epoch ms), ``r`` the tweet's page JSON after the author's handle, pre-rendered
(``schemas.tweet_json.render_tail``, so a page is assembled by concatenation), and
``d`` deleted_at once deleted. A delete only sets ``d``, so it wins whatever order the
post and the delete are applied in, and a replay of either changes nothing. A body
cached without ``r`` (before tails existed) is rendered by the reader. Entries expire;
Cassandra's ``tweets`` table is the durable copy that a miss falls back to.

A body is read with ``HMGET`` of :data:`FIELDS` (:data:`BODY_LUA` inside a script: the
query service's first round trip reads the window's bodies too, ``query/view.py``) and
decoded by :func:`parse_body`. Inside a script a body with ``r`` is read without ``t`` and
``c``, which ``r`` holds rendered: an HMGET of three fields instead of five (the bodies are
most of a cache hit's time inside Redis; ``python -m bench.redis_body_cost`` measures the
read's shapes). Several bodies are one script call on one Redis (one round trip and one
command to pack instead of one per body), a pipeline on a cluster.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from redis.asyncio import Redis

from schemas.tweet_json import render_tail
from sinks.redis_client import Acks, execute, is_cluster

TWEET_TTL_S = 7 * 24 * 3600
FIELDS = ("a", "t", "c", "d", "r")

# A Lua function: the HMGET of FIELDS of one body key (for scripts that read bodies), or of
# TAILED_FIELDS alone when the body has its rendered tail (which holds the text and the time).
TAILED_FIELDS = ("a", "d", "r")
BODY_LUA = """
local function body(key)
  local v = redis.call('HMGET', key, %s)
  if v[3] then return v end
  return redis.call('HMGET', key, %s)
end
""" % (", ".join(f"'{f}'" for f in TAILED_FIELDS), ", ".join(f"'{f}'" for f in FIELDS))

# ARGV: the prefix of body keys, then tweet ids. Returns the HMGET of FIELDS per id. The keys are
# derived from the ids, not passed in KEYS: one server only.
_READ_BODIES = BODY_LUA + """
local out = {}
for i = 2, #ARGV do out[i - 1] = body(ARGV[1] .. ARGV[i]) end
return out
"""


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see query.page.Tweet
class CachedTweet:
    tweet_id: int
    author_id: int
    # None when the body was read with its rendered tail only (``BODY_LUA``): ``rendered`` holds them.
    text: str | None
    created_at: int | None
    deleted_at: int | None
    rendered: bytes | None = None  # the page JSON after the handle (``r``), when cached


def parse_body(tweet_id: int, values: Sequence[bytes | None]) -> CachedTweet | None:
    """A body's cached state from the HMGET of FIELDS, or of TAILED_FIELDS for a body with
    its rendered tail (``BODY_LUA``; text and time are then None): a CachedTweet (a delete
    mark alone is one with ``deleted_at`` and no author: the delete is known), or None for a miss."""
    tailed = len(values) == len(TAILED_FIELDS)
    if tailed:
        author, deleted, rendered = values
    else:
        author, text, created, deleted, rendered = values
    deleted_at = int(deleted) if deleted is not None else None
    if author is None:
        return CachedTweet(tweet_id, 0, "", 0, deleted_at) if deleted_at else None
    if tailed:
        return CachedTweet(tweet_id, int(author), None, None, deleted_at, rendered)
    return CachedTweet(tweet_id, int(author), text.decode() if text is not None else "",
                       int(created) if created is not None else 0, deleted_at, rendered)


class RedisTweets:
    def __init__(self, redis: Redis, *, prefix: str, ttl_s: int = TWEET_TTL_S, acks: Acks | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.acks = acks  # the worker's writes wait for replicas; a reader's refill need not
        self._read_bodies = None if is_cluster(redis) else redis.register_script(_READ_BODIES)

    @property
    def key_prefix(self) -> str:
        """What a body key is before the tweet id."""
        return f"{self.prefix}tweet:"

    def key(self, tweet_id: int) -> str:
        return f"{self.key_prefix}{tweet_id}"

    async def write(self, posted: Iterable[tuple[int, int, str, int]], deleted: Iterable[tuple[int, int]]) -> None:
        """Cache posted tweets (id, author, text, created_at), then mark deletes (id, deleted_at)."""
        keys = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for tweet_id, author_id, text, created_at in posted:
                pipe.hset(self.key(tweet_id), mapping={"a": author_id, "t": text, "c": created_at,
                                                       "r": render_tail(text, created_at)})
                pipe.expire(self.key(tweet_id), self.ttl_s)
                keys.append(self.key(tweet_id))
            for tweet_id, deleted_at in deleted:
                pipe.hset(self.key(tweet_id), "d", deleted_at)
                pipe.expire(self.key(tweet_id), self.ttl_s)
                keys.append(self.key(tweet_id))
            await execute(self.redis, pipe, keys, self.acks)

    async def read(self, tweet_ids: Sequence[int]) -> dict[int, CachedTweet | None]:
        """Cached state per id: a CachedTweet, or None for a miss (not cached, or only a delete mark)."""
        if not tweet_ids:
            return {}
        rows = await self.rows(tweet_ids)
        return {tweet_id: parse_body(tweet_id, row) for tweet_id, row in zip(tweet_ids, rows)}

    async def rows(self, tweet_ids: Sequence[int]) -> list[list[bytes | None]]:
        """The HMGET of FIELDS per id: one script call (on a cluster, one pipeline, which is one
        per node, concurrently)."""
        if self._read_bodies is not None:
            return await self._read_bodies(args=[self.key_prefix, *tweet_ids])
        async with self.redis.pipeline(transaction=False) as pipe:
            for tweet_id in tweet_ids:
                pipe.hmget(self.key(tweet_id), FIELDS)
            return await pipe.execute()
