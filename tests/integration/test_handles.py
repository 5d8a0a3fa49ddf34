"""Author handles (query/handles.py) on the real Redis and PostgreSQL: lookups of the same id
at the same time share one fetch, and a fetch that fails or a caller that goes away leaves
nothing stuck."""
from __future__ import annotations

import asyncio
import secrets
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import psycopg
import pytest
from redis.asyncio import Redis

from query.handles import HandleCache
from query.metrics import QueryMetrics
from settings import Settings
from tests.integration.post_fixtures import unique_handle


class Connections:
    """PostgreSQL connections for the cache, counted (each is one lookup query); ``dsn`` can
    be pointed at a server that is not there."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dsn = settings.postgres_dsn
        self.opened = 0

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        self.opened += 1
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=2,
                                                         **self.settings.postgres_kwargs()) as conn:
            yield conn


@pytest.fixture
async def world(services: Settings) -> AsyncIterator[tuple[Settings, Redis, str, dict[int, str]]]:
    """Two accounts in ``users``, a Redis client and a key prefix of this test's own."""
    accounts = {10**15 + secrets.randbelow(10**15): unique_handle("h") for _ in range(2)}
    conns = Connections(services)
    async with conns() as conn:
        await conn.cursor().executemany("INSERT INTO users (user_id, handle, token_hash) VALUES (%s, %s, %s)",
                                        [(u, h, secrets.token_bytes(32)) for u, h in accounts.items()])
    prefix = f"{services.redis_prefix}test-handles-{secrets.token_hex(4)}:"
    redis = Redis.from_url(services.redis_url)
    try:
        yield services, redis, prefix, accounts
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        async with conns() as conn:
            await conn.execute("DELETE FROM users WHERE user_id = ANY(%s)", (list(accounts),))


async def test_concurrent_lookups_of_an_id_share_one_fetch(world) -> None:
    settings, redis, prefix, accounts = world
    conns = Connections(settings)
    cache = HandleCache(redis, conns, QueryMetrics(), prefix=prefix)
    unknown = 10**15 - 1 - secrets.randbelow(10**14)  # no account
    ids = [*accounts, unknown]
    # 200 streams woken by the same tweets at once: one PostgreSQL query for all of them.
    answers = await asyncio.gather(*(cache.lookup(ids) for _ in range(200)))
    assert all(a == {**accounts, unknown: None} for a in answers)
    assert conns.opened == 1
    assert not cache._inflight
    # ... and Redis has them now: a process with an empty local map does not ask PostgreSQL.
    fresh = HandleCache(redis, conns, QueryMetrics(), prefix=prefix)
    assert await fresh.lookup(ids) == {**accounts, unknown: None}
    assert conns.opened == 1


async def test_a_failed_fetch_fails_every_waiting_lookup_and_the_next_tries_again(world) -> None:
    settings, redis, prefix, accounts = world
    conns = Connections(settings)
    conns.dsn = "postgresql://timeline:timeline@127.0.0.1:9/timeline"  # nothing listens there
    cache = HandleCache(redis, conns, QueryMetrics(), prefix=prefix)
    results = await asyncio.gather(*(cache.lookup(accounts) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, psycopg.OperationalError) for r in results), results
    assert conns.opened == 1  # one fetch, its error given to all 20
    assert not cache._inflight
    conns.dsn = settings.postgres_dsn
    assert await cache.lookup(accounts) == accounts
    assert conns.opened == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_others_fetch(world) -> None:
    settings, redis, prefix, accounts = world
    conns = Connections(settings)
    cache = HandleCache(redis, conns, QueryMetrics(), prefix=prefix)
    first = asyncio.get_running_loop().create_task(cache.lookup(accounts))
    await asyncio.sleep(0)  # the first caller started the fetch
    assert set(cache._inflight) == set(accounts)
    second = asyncio.get_running_loop().create_task(cache.lookup(accounts))
    await asyncio.sleep(0)
    first.cancel()  # its client disconnected
    assert await second == accounts
    with pytest.raises(asyncio.CancelledError):
        await first
    assert conns.opened == 1
    assert not cache._inflight
