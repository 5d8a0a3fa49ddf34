"""Following lists cached in Redis, written by stage 2 and filled by readers.

``<prefix>following:<user>`` is a set of followee ids that always holds ``0`` (so an
empty list is cached too); ``<prefix>followingv:<user>`` is its version. Same rules as
cached timelines (``sinks/redis_timeline.py``): stage 2 drops the set and bumps the
version after it wrote Cassandra's ``following``; a reader fills the set only if the
version it saw before reading Cassandra is unchanged.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from policies.redis_cluster import tagged
from sinks.redis_client import Acks, register_script
from sinks.redis_timeline import drop_and_bump

# Member of every cached following set: an empty list is cached too.
FOLLOWING_SENTINEL = b"0"

# KEYS: following set, version. ARGV: expected version, ttl, then members.
_FOLLOWING_FILL = """
local v = redis.call('GET', KEYS[2])
if v == false or v ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisFollowing:
    """Following lists cached in Redis: ``<prefix>following:<user>``, a set of followee ids.

    Same rules as cached timelines: the writer (stage 2) bumps
    ``<prefix>followingv:<user>`` and drops the set after it wrote Cassandra; a
    reader fills the set only if the version it saw before reading Cassandra is
    unchanged. The set always holds ``0`` so that an empty list is cached too.
    """

    def __init__(self, redis: Redis, *, prefix: str, ttl_s: int = 3600, acks: Acks | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.acks = acks
        self._fill = register_script(redis, _FOLLOWING_FILL)

    # In the slot of the user's timeline (hash tag {user}): query/view.py reads both in one script.
    def key(self, user_id: int) -> str:
        return tagged(self.prefix, "following", user_id)

    def version_key(self, user_id: int) -> str:
        return tagged(self.prefix, "followingv", user_id)

    async def invalidate(self, user_ids: Iterable[int]) -> None:
        """Drop cached lists and bump their versions (after ``following`` changed in Cassandra)."""
        await drop_and_bump(self.redis, ((self.key(u), self.version_key(u)) for u in user_ids), self.ttl_s,
                            self.acks)

    async def members(self, user_id: int) -> set[int] | None:
        """The cached list; None if it is not cached."""
        raw = await self.redis.smembers(self.key(user_id))
        return {int(m) for m in raw} - {0} if raw else None

    async def check(self, user_id: int, authors: Sequence[int]) -> set[int] | None:
        """Which of ``authors`` the user follows; None if the list is not cached."""
        # MULTI/EXEC: the list cannot be evicted between the two commands.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(self.key(user_id))
            pipe.smismember(self.key(user_id), list(authors))
            exists, flags = await pipe.execute()
        return {a for a, f in zip(authors, flags) if f} if exists else None

    async def queue_fill(self, pipe: Pipeline, user_id: int, seen_version: str, followees: Sequence[int]) -> None:
        await self._fill(
            keys=[self.key(user_id), self.version_key(user_id)],
            args=[seen_version, self.ttl_s, FOLLOWING_SENTINEL, *followees],
            client=pipe,
        )

    async def fill(self, user_id: int, seen_version: str, followees: Sequence[int]) -> bool:
        return bool(await self._fill(keys=[self.key(user_id), self.version_key(user_id)],
                                     args=[seen_version, self.ttl_s, FOLLOWING_SENTINEL, *followees]))
