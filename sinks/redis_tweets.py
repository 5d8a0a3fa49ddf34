"""Tweet bodies cached in Redis, for one-round-trip hydration of id-only timelines.

``<prefix>tb:<id>`` is a string: ``<author id>:<tail>`` for a posted tweet, the tail being the
tweet's page JSON after the author's handle, pre-rendered (``schemas.tweet_json.render_tail``: a
page is assembled by concatenation), or ``d<deleted_at>`` once the tweet is deleted. A post is
written only where nothing is (``SET NX``) and a delete overwrites, so the delete wins whatever
order the post and the delete are applied in, and a replay of either changes nothing: a tweet's
body never changes (the first post of an id wins, ``agents/fanout.py``), and a reader's refill
from Cassandra cannot undo a delete. Entries expire; Cassandra's ``tweets`` table is the durable
copy that a miss falls back to.

Why strings: the bodies of a page are one ``MGET`` (inside the first round trip's script,
``query/view.py``; ``rows`` on its own), which Redis answers in about a third of the time of one
``HMGET`` per body of a hash (``python -m bench.redis_body_cost``), and a hit's bodies are most
of what it costs inside Redis. Bodies were hashes (``a t c r d``) under ``<prefix>tweet:<id>``
until 2026-12-02: a query service of that version, still running during an upgrade, reads
those, so a delete also sets the old hash's ``d`` (:data:`LEGACY_KEY`), and they expire on their
own within :data:`TWEET_TTL_S`. That mark can go once no such service runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from redis.asyncio import Redis

from schemas.tweet_json import render_tail
from sinks.redis_client import Acks, execute, is_cluster

TWEET_TTL_S = 7 * 24 * 3600
KEY = "tb:"
LEGACY_KEY = "tweet:"  # the hashes of before 2026-12-02 (module doc)
DELETED = ord("d")


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see query.page.Tweet
class CachedTweet:
    tweet_id: int
    author_id: int  # 0 for a delete mark: the body is gone, the delete is known
    deleted_at: int | None
    rendered: bytes | None  # the page JSON after the handle (None for a delete mark)


def body_value(author_id: int, text: str, created_at: int) -> bytes:
    """What a posted tweet's key holds (module doc)."""
    return b"%d:%b" % (author_id, render_tail(text, created_at))


def body_parts(raw: bytes | None) -> tuple[int, int | None, bytes | None] | None:
    """(author id, deleted_at, rendered tail) from a body key's value - (0, deleted_at, None)
    for a delete mark - or None for a miss (nothing cached, or a value this module did not
    write: the reader then asks Cassandra)."""
    if not raw:
        return None
    if raw[0] == DELETED:
        at = raw[1:]
        return (0, int(at), None) if at.isdigit() else None
    author, sep, tail = raw.partition(b":")
    if not sep or not author.isdigit():
        return None
    return int(author), None, tail


def parse_body(tweet_id: int, raw: bytes | None) -> CachedTweet | None:
    """A body's cached state (:func:`body_parts`) as a CachedTweet, or None for a miss."""
    parts = body_parts(raw)
    return None if parts is None else CachedTweet(tweet_id, *parts)


class RedisTweets:
    def __init__(self, redis: Redis, *, prefix: str, ttl_s: int = TWEET_TTL_S, acks: Acks | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.acks = acks  # the worker's writes wait for replicas; a reader's refill need not

    @property
    def key_prefix(self) -> str:
        """What a body key is before the tweet id."""
        return f"{self.prefix}{KEY}"

    def key(self, tweet_id: int) -> str:
        return f"{self.key_prefix}{tweet_id}"

    async def write(self, posted: Iterable[tuple[int, int, str, int]], deleted: Iterable[tuple[int, int]]) -> None:
        """Cache posted tweets (id, author, text, created_at) where nothing is cached, then mark
        deletes (id, deleted_at), which overwrite (module doc)."""
        keys = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for tweet_id, author_id, text, created_at in posted:
                pipe.set(self.key(tweet_id), body_value(author_id, text, created_at), nx=True, ex=self.ttl_s)
                keys.append(self.key(tweet_id))
            for tweet_id, deleted_at in deleted:
                pipe.set(self.key(tweet_id), b"d%d" % deleted_at, ex=self.ttl_s)
                legacy = f"{self.prefix}{LEGACY_KEY}{tweet_id}"
                pipe.hset(legacy, "d", deleted_at)
                pipe.expire(legacy, self.ttl_s)
                keys += [self.key(tweet_id), legacy]
            await execute(self.redis, pipe, keys, self.acks)

    async def read(self, tweet_ids: Sequence[int]) -> dict[int, CachedTweet | None]:
        """Cached state per id: a CachedTweet, or None for a miss (not cached)."""
        if not tweet_ids:
            return {}
        rows = await self.rows(tweet_ids)
        return {tweet_id: parse_body(tweet_id, row) for tweet_id, row in zip(tweet_ids, rows)}

    async def rows(self, tweet_ids: Sequence[int]) -> list[bytes | None]:
        """Each id's value: one ``MGET`` (on a cluster, redis-py splits it by slot, one call per
        node, concurrently)."""
        keys = [self.key(t) for t in tweet_ids]
        if is_cluster(self.redis):
            return await self.redis.mget_nonatomic(keys)
        return await self.redis.mget(keys)
