"""Connections the query service holds for its lifetime, and the 503 mapping of their failures.

Like the Post service's :mod:`post.resources`: starting never fails because a server is
down. PostgreSQL connects in the background, the Kafka producer (for
``user_active`` events only) is started on demand, and Cassandra is connected in
the background, retried every few seconds until it answers. A request that needs
a missing dependency answers 503 with a ``detail`` naming it.

The object is kept on ``app.state.resources`` and has the two members
:func:`api.auth.authenticate` uses (``auth``, a :class:`api.auth.TokenAuthenticator`
with its token caches and per-address lookup limit, and ``settings``: the
:class:`api.auth.Authenticating` protocol), as the Post service's resources do.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import cassandra
import psycopg
from cassandra.cluster import NoHostAvailable
from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from starlette.responses import Response

from api.auth import TokenAuthenticator
from api.dependencies import PG_TIMEOUT_S, REDIS_TIMEOUT_S, postgres_ok, probe, redis_ok
from api.errors import describe, problem_response
from api.kafka import KafkaGateway
from api.ratelimit import RedisTokenBucket
from query.handles import ActivityTracker, HandleCache
from query.live import LiveHub
from query.metrics import QueryMetrics
from query.reader import HomeTimelineReader
from settings import Settings
from sinks.cassandra import CassandraStore
from sinks.redis_client import connect
from sinks.redis_following import RedisFollowing
from sinks.redis_pipelined import PipelinedRedis
from sinks.redis_live import LiveChannels
from sinks.redis_timeline import RedisTimelines
from sinks.redis_tweets import RedisTweets

log = logging.getLogger(__name__)

CASSANDRA_RETRY_S = 5.0


def _connections(pool: AsyncConnectionPool) -> Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]:
    """``with``-able PostgreSQL connections from ``pool``, waiting at most PG_TIMEOUT_S for one."""

    @asynccontextmanager
    async def connection() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with pool.connection(timeout=PG_TIMEOUT_S) as conn:
            yield conn

    return connection


class CassandraUnavailable(RuntimeError):
    """Cassandra is not connected (yet); ``reason`` says why."""


class CassandraConnector:
    """Opens the CassandraStore in a thread, retrying in the background until it works."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: CassandraStore | None = None
        self.error: str | None = "connecting"
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not await self._try_open():
            self._task = asyncio.get_running_loop().create_task(self._retry())

    async def _try_open(self) -> bool:
        try:
            self.store = await asyncio.to_thread(CassandraStore.open, self.settings)
        except Exception as exc:  # noqa: BLE001 - NoHostAvailable, InvalidRequest (no keyspace), ...
            self.error = describe(exc)
            log.warning("Cassandra not connected: %s; retrying every %.0f s", self.error, CASSANDRA_RETRY_S)
            return False
        self.error = None
        return True

    async def _retry(self) -> None:
        while not await self._try_open():
            await asyncio.sleep(CASSANDRA_RETRY_S)

    def get(self) -> CassandraStore:
        if self.store is None:
            raise CassandraUnavailable(self.error or "connecting")
        return self.store

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        store, self.store = self.store, None
        if store is not None:
            await asyncio.to_thread(store.close)


@dataclass
class QueryResources:
    settings: Settings
    pg: AsyncConnectionPool
    redis: Redis
    kafka: KafkaGateway
    cassandra: CassandraConnector
    metrics: QueryMetrics
    timelines: RedisTimelines
    tweets: RedisTweets
    following: RedisFollowing
    handles: HandleCache
    activity: ActivityTracker
    limiter: RedisTokenBucket
    live: LiveHub  # the open streams' pub/sub (query/live.py)
    # bearer tokens -> users (api.auth)
    auth: TokenAuthenticator = field(init=False)
    # The primary region's PostgreSQL for the writes (markers) of a secondary region's
    # service, whose own ``pg`` is a read-only replica; None: ``pg`` takes them.
    pg_primary: AsyncConnectionPool | None = None
    # The reads' first round trip (sinks/redis_pipelined.py); None on a cluster, TLS or a socket.
    pipelined: PipelinedRedis | None = None
    _reader: HomeTimelineReader | None = None

    @classmethod
    def create(cls, settings: Settings, *, metrics: QueryMetrics, kafka_timeout_s: float = 5.0) -> "QueryResources":
        def pool(dsn: str, name: str, min_size: int = 1) -> AsyncConnectionPool:
            return AsyncConnectionPool(
                dsn, min_size=min_size, max_size=10, open=False, timeout=PG_TIMEOUT_S,
                kwargs={"autocommit": True, "connect_timeout": 3, **settings.postgres_kwargs()}, name=name,
            )

        pg = pool(settings.postgres_dsn, "query-service")
        rds = connect(
            settings, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S,
            health_check_interval=30,
        )
        kafka = KafkaGateway(settings, timeout_s=kafka_timeout_s)
        timelines = RedisTimelines.from_settings(rds, settings)
        res = cls(
            settings=settings, pg=pg, redis=rds, kafka=kafka, cassandra=CassandraConnector(settings),
            metrics=metrics, timelines=timelines,
            tweets=RedisTweets(rds, prefix=settings.redis_prefix),
            following=RedisFollowing(rds, prefix=settings.redis_prefix, ttl_s=settings.timeline_ttl_s),
            handles=HandleCache(rds, _connections(pg), metrics, prefix=settings.redis_prefix),
            activity=ActivityTracker(rds, kafka, metrics, topic=settings.topic_activity,
                                     prefix=settings.redis_prefix),
            limiter=RedisTokenBucket(rds, burst=settings.read_rate_burst, rate_per_s=settings.read_rate_per_s,
                                     prefix=f"{settings.redis_prefix}ratelimit:read:"),
            live=LiveHub(settings, LiveChannels(rds, prefix=settings.redis_prefix)),
        )
        if settings.postgres_write_dsn != settings.postgres_dsn:
            res.pg_primary = pool(settings.postgres_write_dsn, "query-service-writes", min_size=0)
        res.auth = TokenAuthenticator(settings, rds, res.pg_conn, metrics)
        res.pipelined = PipelinedRedis.for_settings(settings, timeout_s=REDIS_TIMEOUT_S,
                                                    connect_timeout_s=REDIS_TIMEOUT_S)
        return res

    async def start(self) -> None:
        await self.pg.open(wait=False)
        if self.pg_primary is not None:
            await self.pg_primary.open(wait=False)
        await asyncio.gather(self.kafka.start(), self.cassandra.start(), self.live.start())

    async def stop(self) -> None:
        await self.live.stop()
        await self.activity.drain(timeout=5.0)
        await self.kafka.stop()
        await self.cassandra.stop()
        await self.pg.close(timeout=2.0)
        if self.pg_primary is not None:
            await self.pg_primary.close(timeout=2.0)
        if self.pipelined is not None:
            await self.pipelined.aclose()
        await self.redis.aclose()

    def pg_conn(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        return _connections(self.pg)()

    def pg_write_conn(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A connection to the server that takes this service's writes (the primary region's)."""
        return _connections(self.pg_primary or self.pg)()

    def reader(self) -> HomeTimelineReader:
        """The reader over the connected stores; CassandraUnavailable (503) until Cassandra answers."""
        if self._reader is None:
            self._reader = HomeTimelineReader(
                self.settings, self.cassandra.get(), self.timelines, tweets=self.tweets, following=self.following,
                pipelined=self.pipelined,
            )
        return self._reader

    async def health(self) -> dict[str, dict[str, Any]]:
        async def cql() -> dict[str, Any]:
            rows = await self.cassandra.get().execute("ping")
            return {"ok": True, "version": rows[0].release_version if rows else None}

        return dict(
            await asyncio.gather(
                probe("postgres", postgres_ok(self.pg_conn), required=True),
                probe("redis", redis_ok(self.redis), required=True),
                probe("cassandra", cql(), required=True),
                # Only user_active events need Kafka: reads work without it.
                probe("kafka", self.kafka.state(), required=False),
            )
        )


def get_query_resources(request: Request) -> QueryResources:
    return request.app.state.resources


# --- Cassandra failures -> 503 (the other stores are mapped by api.dependencies) -----


async def _on_cassandra(request: Request, exc: Exception) -> Response:
    detail = str(exc) if isinstance(exc, CassandraUnavailable) else describe(exc)
    log.warning("Cassandra unavailable: %s", detail)
    return problem_response(503, f"Cassandra is unavailable: {detail}; retry shortly",
                            headers={"Retry-After": "2"})


def install_cassandra_errors(app: FastAPI) -> None:
    app.add_exception_handler(CassandraUnavailable, _on_cassandra)
    app.add_exception_handler(NoHostAvailable, _on_cassandra)
    app.add_exception_handler(cassandra.DriverException, _on_cassandra)
