"""Fixtures for end-to-end pipeline tests: an isolated world per test.

Each test gets its own topics, Cassandra keyspace, Redis key prefix, consumer
group and RocksDB folder, so tests never see each other's data, and a worker
runs as a real child process (``faust -A faust_app worker``).
"""
from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import httpx

from api.auth import hash_token, new_token
# reader_for(settings): the read side on a namespace's stores, closed afterwards (one helper with the benchmark's)
from bench.context import open_reader as reader_for  # noqa: F401  (imported by the tests from here)
from ops.schema import apply_cassandra, apply_postgres, create_topics, drop_namespace, run_sync
from query.reader import HomeTimelineReader
from query.service import create_app
from settings import Settings, get_settings


def isolated_settings(tmp_path: Path, **overrides) -> Settings:
    """The environment's settings in a namespace of their own (``Settings.isolated``): ``it-*``
    topics with 4 partitions, keyspace and schema ``it_<tag>``, Redis prefix ``it:<tag>:``."""
    return get_settings().isolated("it", uuid.uuid4().hex[:10], tmp_path, **overrides)


def provision(settings: Settings) -> None:
    apply_cassandra(settings)
    apply_postgres(settings)
    create_topics(settings, settings.topic_partitions)


def drop(settings: Settings) -> None:
    """Remove everything an isolated world left in the four servers."""
    done = run_sync(drop_namespace(settings))
    assert not [k for k in done if k.endswith("_error")], done


async def diff_timelines(reader: HomeTimelineReader, expected: dict[int, list[int]], *, page_size: int = 37) -> dict[int, tuple]:
    """Users whose paged home timeline differs from the reference: user -> (got, expected) heads."""
    diffs = {}
    for user_id, want in sorted(expected.items()):
        got = await reader.all_ids(user_id, page_size=page_size)
        if got != want:
            diffs[user_id] = _first_difference(got, want)
    return diffs


def _first_difference(got: list[int], want: list[int]) -> tuple:
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (len(got), len(want), first, got[first:first + 3], want[first:first + 3])


class QueryClient:
    """The query service (``query.service``) in-process over ``httpx.ASGITransport``,
    with an account and bearer token in PostgreSQL ``users`` for every reader."""

    def __init__(self, client: httpx.AsyncClient, tokens: dict[int, str]) -> None:
        self.client = client
        self.tokens = tokens
        self.sources: dict[str, int] = {}  # meta.source of every page read -> count

    async def home_ids(self, user_id: int, *, limit: int) -> list[int]:
        """Every id of the user's home timeline, paging with ``next_cursor`` to its end."""
        ids: list[int] = []
        cursor: str | None = None
        headers = {"Authorization": f"Bearer {self.tokens[user_id]}"}
        for _ in range(10_000):
            params: dict[str, object] = {"limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            resp = await self.client.get(f"/v1/users/{user_id}/timelines/home", params=params, headers=headers)
            assert resp.status_code == 200, f"user {user_id}: {resp.status_code} {resp.text}"
            body = resp.json()
            assert len(body["data"]) <= limit
            ids.extend(int(t["tweet_id"]) for t in body["data"])
            self.sources[body["meta"]["source"]] = self.sources.get(body["meta"]["source"], 0) + 1
            cursor = body["meta"]["next_cursor"]
            if cursor is None:
                return ids
        raise AssertionError(f"user {user_id}: paging does not end")


@asynccontextmanager
async def query_client(settings: Settings, users: list[int]) -> AsyncIterator[QueryClient]:
    app = create_app(settings)
    tokens = {u: new_token() for u in users}
    async with app.router.lifespan_context(app):
        async with app.state.resources.pg_conn() as conn:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO users (user_id, handle, token_hash) VALUES (%s, %s, %s)",
                    [(u, f"u{u}", hash_token(t)) for u, t in tokens.items()],
                )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
            yield QueryClient(client, tokens)


async def diff_timelines_http(query: QueryClient, expected: dict[int, list[int]], *, limit: int) -> dict[int, tuple]:
    """Like diff_timelines, through the query service's HTTP API."""
    diffs = {}
    for user_id, want in sorted(expected.items()):
        got = await query.home_ids(user_id, limit=limit)
        if got != want:
            diffs[user_id] = _first_difference(got, want)
    return diffs
