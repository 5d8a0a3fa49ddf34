"""The stores an agent writes to, opened once per worker process."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from agents.failures import backoff_retry
from agents.metrics import COMMITLOG_PROBES, SINK_RETRIES, SINK_SECONDS
from settings import Settings
from sinks.cassandra import CassandraStore
from sinks.postgres import TweetClaims
from sinks.redis_celebrities import RedisCelebrities
from sinks.redis_client import Acks, AnyRedis, connect
from sinks.redis_following import RedisFollowing
from sinks.redis_live import LiveChannels
from sinks.redis_timeline import RedisTimelines
from sinks.redis_tweets import RedisTweets

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Sinks:
    settings: Settings
    cassandra: CassandraStore
    claims: TweetClaims  # PostgreSQL: which post of a tweet id came first
    redis: AnyRedis
    timelines: RedisTimelines
    author_windows: RedisTimelines
    tweets: RedisTweets
    celebrities: RedisCelebrities
    following: RedisFollowing
    live: LiveChannels

    @classmethod
    async def open(cls, settings: Settings) -> "Sinks":
        cassandra = await asyncio.to_thread(functools.partial(CassandraStore.open, settings, durable_acks=True))
        if cassandra.gate is not None:
            cassandra.gate.on_probe = COMMITLOG_PROBES.inc
            cassandra.gate.retry = with_retry
        claims = TweetClaims(settings)  # connects on first use
        redis = connect(settings, socket_connect_timeout=5.0, socket_timeout=settings.redis_timeout_s)
        acks = Acks.from_settings(settings)  # a cluster: a batch is done once replicas hold it
        timelines = RedisTimelines.from_settings(redis, settings, acks)
        tweets = RedisTweets(redis, prefix=settings.redis_prefix, acks=acks)
        celebrities = RedisCelebrities(redis, prefix=settings.redis_prefix, acks=acks)
        following = RedisFollowing(redis, prefix=settings.redis_prefix, ttl_s=settings.timeline_ttl_s, acks=acks)
        return cls(settings=settings, cassandra=cassandra, claims=claims, redis=redis, timelines=timelines,
                   author_windows=RedisTimelines.author_windows(redis, settings, acks), tweets=tweets,
                   celebrities=celebrities, following=following,
                   live=LiveChannels(redis, prefix=settings.redis_prefix))

    async def close(self) -> None:
        await self.claims.close()
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


#: The longest wait between two attempts of a store operation. With 5 s (and the driver's
#: reconnection every 4 s), deliveries resumed 5.8-9.9 s after a killed Cassandra answered again
#: (the fault suite, five kills on 2026-12-02): the stages' next attempt came up to 5 s after
#: the driver had reconnected.
RETRY_MAX_DELAY_S = 2.0


async def with_retry(what: str, fn: Callable[[], Awaitable[T]], *, max_delay: float = RETRY_MAX_DELAY_S) -> T:
    """Run a store operation, retrying while its errors are transient.

    A store that is down must not make the worker skip or lose events: the batch
    waits (and Kafka holds the rest) until the store answers again. Every write
    is idempotent, so repeating a half-applied step is harmless. An error that
    retrying cannot fix (a store refusing the data, a missing table) is raised at
    once, for ``agents/failures.py`` to dead-letter the event or stop the worker.
    """
    started = time.perf_counter()

    def on_retry(exc: BaseException, attempt: int, delay: float) -> None:
        SINK_RETRIES.labels(what).inc()
        log.warning("%s failed (attempt %d): %r; retrying in %.1fs", what, attempt, exc, delay,
                    extra={"event": "store_retry", "store_op": what, "attempt": attempt, "error": repr(exc),
                           "retry_in_s": round(delay, 2)})

    result = await backoff_retry(what, fn, max_delay=max_delay, on_retry=on_retry)
    SINK_SECONDS.labels(what).observe(time.perf_counter() - started)
    return result
