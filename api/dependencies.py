"""The servers both HTTP services depend on (PostgreSQL, Redis, Kafka): how long a
request waits for them, their ``/healthz`` checks, and the 503 a request answers when one
of them fails.

A service starts even when a server is down (each service's resources connect in the
background); a request that needs a missing server answers 503 within a few seconds,
with ``Retry-After`` and a ``detail`` naming the server (:func:`install_dependency_errors`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import Any, Awaitable, Callable

import psycopg
import psycopg.errors
import redis.exceptions
from fastapi import FastAPI, Request
from psycopg_pool import PoolTimeout
from redis.asyncio import Redis
from starlette.responses import Response

from api.errors import describe, problem_response
from api.kafka import KafkaUnavailable

log = logging.getLogger(__name__)

PG_TIMEOUT_S = 3.0
REDIS_TIMEOUT_S = 2.0
HEALTH_TIMEOUT_S = 4.0


# --- /healthz checks -------------------------------------------------------------------


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
        result = {"ok": False, "error": describe(exc)}
    if required is not None:
        result["required"] = required
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return name, result


# --- failures of dependencies -> 503 ---------------------------------------------------


def unavailable(detail: str, retry_after: int = 1) -> Response:
    """The 503 of a request that a missing dependency stopped, with ``Retry-After``."""
    return problem_response(503, detail, headers={"Retry-After": str(retry_after)})


async def _on_kafka(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KafkaUnavailable)
    if exc.maybe_written:
        # Follows, unfollows, deletes and sign-ups are safe to repeat; POST /v1/tweets
        # answers this case itself (post.tweets), naming the Idempotency-Key.
        return problem_response(
            503,
            f"the outcome is unknown: the event was handed to the event log but not acknowledged in "
            f"time, so it may or may not be on the log ({exc.reason}); retry the request",
            slug="outcome-unknown", outcome="unknown", headers={"Retry-After": "1"},
        )
    return unavailable(f"the event log is unavailable, nothing was accepted: {exc.reason}")


async def _on_postgres(request: Request, exc: Exception) -> Response:
    log.warning("PostgreSQL unavailable: %s", describe(exc))
    return unavailable(f"PostgreSQL is unavailable: {describe(exc)}")


async def _on_missing_schema(request: Request, exc: Exception) -> Response:
    log.error("PostgreSQL schema missing: %s", describe(exc))
    return unavailable(
        f"PostgreSQL schema is missing ({describe(exc)}); apply ops/schema.sql "
        "(python -m localenv up)", retry_after=30
    )


async def _on_read_only(request: Request, exc: Exception) -> Response:
    log.error("PostgreSQL refused a write as a read-only replica: %s", describe(exc))
    return unavailable(
        "this region's PostgreSQL is a read-only replica and this write was sent to it; writes go to the "
        "primary region's server (TL_POSTGRES_PRIMARY_DSN, docs/operations.md \"Two regions\")", retry_after=30
    )


async def _on_redis(request: Request, exc: Exception) -> Response:
    log.warning("Redis unavailable: %s", describe(exc))
    return unavailable(f"Redis is unavailable: {describe(exc)}")


def install_dependency_errors(app: FastAPI) -> None:
    app.add_exception_handler(KafkaUnavailable, _on_kafka)
    app.add_exception_handler(PoolTimeout, _on_postgres)
    app.add_exception_handler(psycopg.OperationalError, _on_postgres)
    app.add_exception_handler(psycopg.errors.UndefinedTable, _on_missing_schema)
    app.add_exception_handler(psycopg.errors.ReadOnlySqlTransaction, _on_read_only)
    app.add_exception_handler(redis.exceptions.ConnectionError, _on_redis)
    app.add_exception_handler(redis.exceptions.TimeoutError, _on_redis)
