"""Connections the Post service holds for its lifetime, and the 503 mapping of their failures.

:class:`Resources` is created and started by the app's lifespan and kept on
``app.state.resources``. Starting never fails because a server is down: the
PostgreSQL pool connects in the background, the Kafka producer is (re)started on
demand, the Snowflake worker id lease is retried in the background. Requests that need
a missing dependency answer 503 within a few seconds, with a ``detail`` naming it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import psycopg
import psycopg.errors
import redis.exceptions
from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.asyncio import Redis
from starlette.responses import Response

from api.auth import TokenAuthenticator
from api.errors import Problem, problem_response
from api.follow_cap import FollowCap
from api.idempotency import IdempotencyStore
from api.kafka import KafkaGateway, KafkaUnavailable
from api.metrics import Metrics
from api.limits import Limiter
from api.worker_id import NoWorkerId, PostgresLeases, WorkerIdSource
from policies.worker_lease import LeaseTiming
from settings import Settings

log = logging.getLogger(__name__)

PG_TIMEOUT_S = 3.0
REDIS_TIMEOUT_S = 2.0


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
    # TL_MAX_FOLLOWING, counted in PostgreSQL (api.follow_cap).
    follow_cap: FollowCap = field(init=False)
    # Idempotency-Key records and locks, in PostgreSQL (api.idempotency).
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
        rds = Redis.from_url(
            settings.redis_url,
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


# --- /healthz checks, shared with the query service -----------------------------------

HEALTH_TIMEOUT_S = 4.0


async def postgres_ok(pg_conn: Callable[[], AbstractAsyncContextManager[Any]]) -> dict[str, Any]:
    async with pg_conn() as conn:
        await conn.execute("SELECT 1")
    return {"ok": True}


async def redis_ok(redis: Redis) -> dict[str, Any]:
    await redis.ping()
    return {"ok": True}


async def probe(name: str, check: Awaitable[dict[str, Any]], *, required: bool | None = None
                ) -> tuple[str, dict[str, Any]]:
    """``(name, result)`` of one dependency check, within HEALTH_TIMEOUT_S; a failure is
    ``{"ok": False, "error": ...}``. ``required`` (when given) and the latency are added."""
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(check, HEALTH_TIMEOUT_S)
    except (Exception, asyncio.TimeoutError) as exc:
        result = {"ok": False, "error": _describe(exc)}
    if required is not None:
        result["required"] = required
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return name, result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def get_resources(request: Request) -> Resources:
    return request.app.state.resources


# --- failures of dependencies -> 503 ---------------------------------------------------


def _unavailable(detail: str, retry_after: int = 1) -> Response:
    return problem_response(503, detail, headers={"Retry-After": str(retry_after)})


async def _on_kafka(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KafkaUnavailable)
    if exc.maybe_written:
        # Follows, unfollows, deletes and sign-ups are safe to repeat; POST /v1/tweets
        # answers this case itself (api.post_service), naming the Idempotency-Key.
        return problem_response(
            503,
            f"the outcome is unknown: the event was handed to the event log but not acknowledged in "
            f"time, so it may or may not be on the log ({exc.reason}); retry the request",
            slug="outcome-unknown", outcome="unknown", headers={"Retry-After": "1"},
        )
    return _unavailable(f"the event log is unavailable, nothing was accepted: {exc.reason}")


async def _on_postgres(request: Request, exc: Exception) -> Response:
    log.warning("PostgreSQL unavailable: %s", _describe(exc))
    return _unavailable(f"PostgreSQL is unavailable: {_describe(exc)}")


async def _on_missing_schema(request: Request, exc: Exception) -> Response:
    log.error("PostgreSQL schema missing: %s", _describe(exc))
    return _unavailable(
        f"PostgreSQL schema is missing ({_describe(exc)}); apply ops/schema.sql "
        "(python -m localenv up)", retry_after=30
    )


async def _on_redis(request: Request, exc: Exception) -> Response:
    log.warning("Redis unavailable: %s", _describe(exc))
    return _unavailable(f"Redis is unavailable: {_describe(exc)}")


async def _on_no_worker(request: Request, exc: Exception) -> Response:
    return _unavailable(f"cannot issue ids: {exc}", retry_after=5)


def install_dependency_errors(app: FastAPI) -> None:
    app.add_exception_handler(KafkaUnavailable, _on_kafka)
    app.add_exception_handler(PoolTimeout, _on_postgres)
    app.add_exception_handler(psycopg.OperationalError, _on_postgres)
    app.add_exception_handler(psycopg.errors.UndefinedTable, _on_missing_schema)
    app.add_exception_handler(redis.exceptions.ConnectionError, _on_redis)
    app.add_exception_handler(redis.exceptions.TimeoutError, _on_redis)
    app.add_exception_handler(NoWorkerId, _on_no_worker)


__all__ = ["Problem", "Resources", "get_resources", "install_dependency_errors"]
