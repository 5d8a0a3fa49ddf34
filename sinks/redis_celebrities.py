"""The set of celebrities (authors whose tweets are pulled at read time), cached in Redis.

The durable set is Cassandra's ``celebrities`` table (one partition, written by stage 1
with ``author_status``); ``<prefix>celebrities`` in Redis is a cache of it like any other
key: it may vanish at any moment (a restart, ``FLUSHALL``, eviction under ``maxmemory``).

* A loaded set always holds the member ``0``, so "loaded and empty" differs from "gone".
* Stage 1, after writing Cassandra, updates a loaded set in place (``SADD``/``SREM`` in one
  script, atomic); when the set is not loaded it only bumps ``<prefix>celebritiesv`` (a
  fresh token each time, never a counter that a flush could bring back to a value a reader
  saw).
* A reader that finds the set not loaded reads Cassandra and fills the set only if the
  version it saw *before* that read is unchanged, so it never installs a list older than a
  write that finished meanwhile.
"""
from __future__ import annotations

from typing import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from sinks.redis_client import Acks, execute, register_script
from sinks.redis_timeline import version_token

LOADED = b"0"

# KEYS: set, version. ARGV: new version token, then 'a' or 'r' and an author id, repeated.
_UPDATE = """
if redis.call('SISMEMBER', KEYS[1], '0') == 1 then
  for i = 2, #ARGV, 2 do
    if ARGV[i] == 'a' then redis.call('SADD', KEYS[1], ARGV[i + 1])
    else redis.call('SREM', KEYS[1], ARGV[i + 1]) end
  end
  return 1
end
redis.call('SET', KEYS[2], ARGV[1])
return 0
"""

# KEYS: set, version. ARGV: expected version, then members. A missing version never
# matches: the reader's first round trip creates it (query/view.py).
_FILL = """
local v = redis.call('GET', KEYS[2])
if v == false or v ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], '0')
for i = 2, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
return 1
"""

class RedisCelebrities:
    def __init__(self, redis: Redis, *, prefix: str, acks: Acks | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.acks = acks
        self._update = register_script(redis, _UPDATE)
        self._fill = register_script(redis, _FILL)

    def key(self) -> str:
        return f"{self.prefix}celebrities"

    def version_key(self) -> str:
        """Hash-tagged with the set's name: the set and its version share a slot."""
        return f"{self.prefix}celebritiesv:{{{self.key()}}}"

    async def update(self, changes: Iterable[tuple[int, bool]]) -> None:
        """After Cassandra was written: ``(author, is_celebrity)`` applied to a loaded set,
        or the version bumped when the set is not loaded."""
        args: list[str | int] = [version_token()]
        for author_id, celebrity in changes:
            args += ["a" if celebrity else "r", author_id]
        if len(args) <= 1:
            return
        keys = [self.key(), self.version_key()]
        if self.acks is None:
            await self._update(keys=keys, args=args)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._update(keys=keys, args=args, client=pipe)
            await execute(self.redis, pipe, keys[:1], self.acks)

    def queue_fill(self, pipe: Pipeline, seen_version: str, authors: Iterable[int]) -> None:
        self._fill(keys=[self.key(), self.version_key()], args=[seen_version, *authors], client=pipe)

    async def fill(self, seen_version: str, authors: Iterable[int]) -> bool:
        return bool(await self._fill(keys=[self.key(), self.version_key()], args=[seen_version, *authors]))
