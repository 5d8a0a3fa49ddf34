"""The stores an agent writes to, opened once per worker process."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from redis.asyncio import Redis

from agents.metrics import SINK_RETRIES, SINK_SECONDS
from settings import Settings
from sinks.cassandra import CassandraStore
from sinks.redis_timeline import RedisTimelines
from sinks.redis_tweets import RedisTweets

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Sinks:
    settings: Settings
    cassandra: CassandraStore
    redis: Redis
    timelines: RedisTimelines
    tweets: RedisTweets

    @classmethod
    async def open(cls, settings: Settings) -> "Sinks":
        cassandra = await asyncio.to_thread(CassandraStore.open, settings)
        redis = Redis.from_url(settings.redis_url)
        timelines = RedisTimelines(
            redis, prefix=settings.redis_prefix, cap=settings.timeline_cap, ttl_s=settings.timeline_ttl_s
        )
        tweets = RedisTweets(redis, prefix=settings.redis_prefix)
        return cls(settings=settings, cassandra=cassandra, redis=redis, timelines=timelines, tweets=tweets)

    def celebrities_key(self) -> str:
        return f"{self.settings.redis_prefix}celebrities"

    async def close(self) -> None:
        await self.redis.aclose()
        await asyncio.to_thread(self.cassandra.close)


_sinks: Sinks | None = None
_lock = asyncio.Lock()


async def get_sinks(settings: Settings) -> Sinks:
    global _sinks
    async with _lock:
        if _sinks is None:
            _sinks = await Sinks.open(settings)
    return _sinks


async def with_retry(what: str, fn: Callable[[], Awaitable[T]], *, max_delay: float = 5.0) -> T:
    """Retry a store operation until it succeeds.

    A store that is down must not make the worker skip or lose events: the batch
    waits (and Kafka holds the rest) until the store answers again. Every write
    is idempotent, so repeating a half-applied step is harmless.
    """
    delay = 0.1
    attempt = 0
    started = time.perf_counter()
    while True:
        try:
            result = await fn()
            SINK_SECONDS.labels(what).observe(time.perf_counter() - started)
            return result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged and retried
            attempt += 1
            SINK_RETRIES.labels(what).inc()
            log.warning("%s failed (attempt %d): %r; retrying in %.1fs", what, attempt, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
