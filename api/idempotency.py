"""``Idempotency-Key`` for ``POST /v1/tweets``: a retried request returns the same tweet.

Two Redis keys per (user, key), the client's key hashed so any 1..200-character value
is safe in a Redis key:

* ``idem:lock:<user>:<sha256>`` - ``SET NX EX 30`` taken for the duration of one
  request. A concurrent retry that finds it taken gets 409 (retry shortly) and never
  produces, so concurrent retries cannot double-post.
* ``idem:tweet:<user>:<sha256>`` - 24 h record ``{fp, tweet_id, created_at, text, done}``.
  Written (``done: false``) *before* the event is produced, so the tweet id is fixed
  before anything can reach the log; set ``done: true`` once Kafka acknowledged.

A retry that finds ``done`` replays the stored response (201, same tweet id). A retry
that finds ``done: false`` - the previous attempt timed out after handing the event to
Kafka, so it may or may not be in the log - produces the *same* event again (same
tweet id and time); consumers keep the first ``tweet_posted`` of an id. When an
attempt fails before the event was handed to Kafka the record is deleted: nothing of
that attempt remains. The same key with a different text is refused (422).
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

RECORD_TTL_S = 24 * 3600
LOCK_TTL_S = 30
MAX_KEY_CHARS = 200

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Record:
    fp: str
    tweet_id: int
    created_at: int
    text: str
    done: bool

    def dumps(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def loads(cls, raw: bytes) -> "Record":
        data: dict[str, Any] = orjson.loads(raw)
        return cls(**data)


class IdempotencySlot:
    def __init__(self, redis: Redis, user_id: int, key: str) -> None:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        self._redis = redis
        self.record_key = f"idem:tweet:{user_id}:{digest}"
        self.lock_key = f"idem:lock:{user_id}:{digest}"
        self._lock_token: str | None = None

    async def lock(self) -> bool:
        token = secrets.token_hex(8)
        if await self._redis.set(self.lock_key, token, nx=True, ex=LOCK_TTL_S):
            self._lock_token = token
            return True
        return False

    async def unlock(self) -> None:
        if self._lock_token is not None:
            token, self._lock_token = self._lock_token, None
            await self._redis.eval(_UNLOCK, 1, self.lock_key, token)

    async def get(self) -> Record | None:
        raw = await self._redis.get(self.record_key)
        return None if raw is None else Record.loads(raw)

    async def put(self, record: Record) -> None:
        await self._redis.set(self.record_key, record.dumps(), ex=RECORD_TTL_S)

    async def delete(self) -> None:
        await self._redis.delete(self.record_key)
