"""Connections the Post service holds for its lifetime, the one way it emits events, and
the 503 mapping of their failures.

:class:`Resources` is created and started by the app's lifespan and kept on
``app.state.resources``. Starting never fails because a server is down: the
PostgreSQL pool connects in the background, the Kafka producer is (re)started on
demand, the Snowflake worker id lease is retried in the background. Requests that need
a missing dependency answer 503 within a few seconds, with a ``detail`` naming it
(``api.dependencies``; a missing worker id here).
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import psycopg
from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from starlette.responses import Response

from api.auth import TokenAuthenticator
from api.dependencies import (
    PG_TIMEOUT_S, REDIS_TIMEOUT_S, install_dependency_errors, postgres_ok, probe, redis_ok, unavailable,
)
from api.kafka import KafkaGateway
from api.limits import Limiter
from policies.worker_lease import LeaseTiming
from post.follow_cap import FollowCap
from post.idempotency import IdempotencyStore
from post.leases import PostgresLeases
from post.metrics import Metrics
from post.worker_id import NoWorkerId, WorkerIdSource
from schemas.events import Event, topic_of
from settings import Settings
from sinks.redis_client import connect


@dataclass
class Resources:
    settings: Settings
    pg: AsyncConnectionPool
    redis: Redis
    kafka: KafkaGateway
    ids: WorkerIdSource
    metrics: Metrics
    # Rate limits (api.limits): tweets, follows and unfollows per user, sign-ups per address.
    limiter: Limiter = field(init=False)
    follow_limiter: Limiter = field(init=False)
    signup_limiter: Limiter = field(init=False)
    # Bearer tokens -> users, with the per-address lookup limit (api.auth).
    auth: TokenAuthenticator = field(init=False)
    # TL_MAX_FOLLOWING, counted in PostgreSQL (post.follow_cap).
    follow_cap: FollowCap = field(init=False)
    # Idempotency-Key records and locks, in PostgreSQL (post.idempotency).
    idempotency: IdempotencyStore = field(init=False)

    def __post_init__(self) -> None:
        self.limiter, self.follow_limiter, self.signup_limiter = post_limiters(self.redis, self.settings, self.metrics)
        self.auth = TokenAuthenticator(
            self.settings, self.redis, self.pg_conn, self.metrics,
            on_limited=lambda: self.metrics.rate_limited.labels("token_lookup").inc(),
        )
        self.follow_cap = FollowCap(self.pg_conn, self.settings.max_following)
        self.idempotency = IdempotencyStore(self.pg_conn)

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        kafka_timeout_s: float = 5.0,
        instance: str | None = None,
        metrics: Metrics | None = None,
    ) -> "Resources":
        pg = AsyncConnectionPool(
            settings.postgres_dsn,
            min_size=1,
            max_size=10,
            open=False,
            timeout=PG_TIMEOUT_S,
            kwargs={"autocommit": True, "connect_timeout": 3, **settings.postgres_kwargs()},
            name="post-service",
        )
        rds = connect(
            settings,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
            health_check_interval=30,
        )
        timing = LeaseTiming.for_ttl(settings.snowflake_lease_ttl_s)
        leases = PostgresLeases(
            settings.postgres_dsn,
            settings.postgres_kwargs(),
            # A statement that takes longer is abandoned; renewal still has retries left.
            statement_timeout_s=max(0.5, min(5.0, timing.renew_every_s / 2)),
        )
        return cls(
            settings=settings,
            pg=pg,
            redis=rds,
            kafka=KafkaGateway(settings, timeout_s=kafka_timeout_s),
            ids=WorkerIdSource(
                leases,
                fixed_worker_id=settings.snowflake_worker_id,
                epoch_ms=settings.snowflake_epoch_ms,
                instance=instance,
                timing=timing,
            ),
            metrics=metrics or Metrics(),
        )

    async def start(self) -> None:
        await self.pg.open(wait=False)
        await asyncio.gather(self.kafka.start(), self.ids.start())
        self.idempotency.start()

    async def stop(self) -> None:
        await self.idempotency.stop()
        await self.ids.stop()
        await self.kafka.stop()
        await self.pg.close(timeout=2.0)
        await self.redis.aclose()

    async def emit(self, event: Event) -> None:
        """Append ``event`` to the log: to its type's topic (``schemas.events.topic_of``, in
        this service's namespace), keyed by its type's key field; returns once Kafka
        acknowledged it. KafkaUnavailable otherwise, saying whether it may still be on the
        log (the 503 says so: ``api.dependencies``, and ``post.tweets`` for a tweet)."""
        await self.kafka.produce(topic_of(event, self.settings), event)
        self.metrics.events.labels(event.TYPE).inc()

    @asynccontextmanager
    async def pg_conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self.pg.connection(timeout=PG_TIMEOUT_S) as conn:
            yield conn

    async def health(self) -> dict[str, dict[str, Any]]:
        checks = dict(
            await asyncio.gather(
                probe("postgres", postgres_ok(self.pg_conn)),
                probe("redis", redis_ok(self.redis)),
                probe("kafka", self.kafka.state()),
            )
        )
        checks["snowflake"] = self.ids.state()
        return checks


def post_limiters(redis: Redis, settings: Settings, metrics: Metrics) -> tuple[Limiter, Limiter, Limiter]:
    """The Post service's limits: tweets per user, follows and unfollows per user, sign-ups
    per client address. Each fails open when Redis does not answer (api.limits)."""

    def counted(name: str) -> Callable[[], None]:
        return lambda: metrics.rate_limited.labels(name).inc()

    s = settings
    posts = Limiter(
        redis, name="post", burst=s.post_rate_burst, rate_per_s=s.post_rate_per_s, prefix="",
        refusal=lambda wait: (f"rate limit exceeded: at most {s.post_rate_burst} tweets at once, refilled at "
                              f"{s.post_rate_per_s:g} per second; retry in {wait} s"),
        metrics=metrics, on_limited=counted("post"),
    )
    follows = Limiter(
        redis, name="follow", burst=s.follow_rate_burst, rate_per_s=s.follow_rate_per_s, prefix=s.redis_prefix,
        refusal=lambda wait: (f"rate limit exceeded: at most {s.follow_rate_burst} follows and unfollows at once, "
                              f"refilled at {s.follow_rate_per_s:g} per second; retry in {wait} s"),
        metrics=metrics, on_limited=counted("follow"),
    )
    signups = Limiter(
        redis, name="signup", burst=s.signup_rate_burst, rate_per_s=s.signup_rate_per_s, prefix=s.redis_prefix,
        refusal=lambda wait: (f"rate limit exceeded: at most {s.signup_rate_burst} sign-ups from one address at "
                              f"once, refilled at {s.signup_rate_per_s:g} per second; retry in {wait} s"),
        metrics=metrics, on_limited=counted("signup"),
    )
    return posts, follows, signups


def get_resources(request: Request) -> Resources:
    return request.app.state.resources


async def _on_no_worker(request: Request, exc: Exception) -> Response:
    return unavailable(f"cannot issue ids: {exc}", retry_after=5)


def install_post_errors(app: FastAPI) -> None:
    """The 503s of the shared dependencies (``api.dependencies``) and of a missing worker id."""
    install_dependency_errors(app)
    app.add_exception_handler(NoWorkerId, _on_no_worker)
