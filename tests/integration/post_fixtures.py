"""Fixtures and helpers for the Post service integration tests (real servers, no mocks).

* ``post_settings``: settings whose five topics carry a unique per-module prefix and
  4 partitions, created on the real broker (and deleted afterwards); the sign-up limit
  lifted, the Redis prefix (of the rate-limit buckets) the module's own.
* ``post_client``: the Post service app (lifespan entered explicitly, since
  ``httpx.ASGITransport`` does not run it) behind an ``httpx.AsyncClient``.
* ``read_topic``: every record of a topic up to its current end offsets, read back with
  a real aiokafka consumer - so "exactly one event" assertions are exact.
"""
from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from api.errors import PROBLEM_JSON
from ops.schema import create_topics_async, delete_topics_async as delete_topics
from post.service import create_app
from schemas.events import decode
from settings import Settings, get_settings

PARTITIONS = 4


def unique_handle(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


@pytest_asyncio.fixture(scope="module")
async def post_settings(services: Any) -> AsyncIterator[Settings]:
    tag = uuid.uuid4().hex[:10]
    prefix = f"it-post-{tag}-"
    # The module's sign-ups all come from the test client's one address: its sign-up limit
    # is lifted (tests/integration/test_abuse_limits.py tests it). The other limits keep
    # their defaults, their Redis keys under a prefix of the module's own.
    settings = get_settings().with_topic_prefix(prefix, PARTITIONS).replace(
        redis_prefix=f"it:post-{tag}:", signup_rate_burst=100_000, signup_rate_per_s=1000.0,
    )
    await create_topics_async(settings, partitions=PARTITIONS)
    yield settings
    try:
        await delete_topics(settings)
    except Exception:  # best effort: leftover test topics are harmless
        pass


@asynccontextmanager
async def running_client(settings: Settings, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, **kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://post") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest_asyncio.fixture(scope="module")
async def post_client(post_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(post_settings) as client:
        yield client


async def signup(client: httpx.AsyncClient, handle: str | None = None) -> dict[str, Any]:
    resp = await client.post("/v1/users", json={"handle": handle or unique_handle()})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    body["auth"] = {"Authorization": f"Bearer {body['token']}"}
    return body


def expected_partition(key: bytes, partitions: int) -> int:
    all_partitions = list(range(partitions))
    return DefaultPartitioner()(key, all_partitions, all_partitions)


async def read_topic(settings: Settings, topic: str) -> list[Any]:
    """All records of ``topic`` from the beginning up to the end offsets as of now."""
    consumer = AIOKafkaConsumer(
        **settings.kafka_kwargs(), enable_auto_commit=False, group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        metadata = await consumer._client.fetch_all_metadata()
        parts = metadata.partitions_for_topic(topic)
        assert parts, f"topic {topic!r} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, msgs in batch.items():
                records.extend(m for m in msgs if m.offset < end[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def events_on(settings: Settings, topic: str, **fields: Any) -> list[tuple[Any, Any]]:
    """(record, decoded event) for records of ``topic`` whose event has all ``fields``."""
    out = []
    for record in await read_topic(settings, topic):
        event = decode(record.value)
        if all(getattr(event, name, None) == value for name, value in fields.items()):
            out.append((record, event))
    return out


def assert_problem(resp: httpx.Response, status: int, detail: str, *, exact: bool = False) -> dict[str, Any]:
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    assert resp.headers["content-type"] == PROBLEM_JSON, resp.headers
    body = resp.json()
    assert body["status"] == status
    assert body["title"] and body["type"].startswith("tag:home-timeline,2024:problem/")
    if exact:
        assert body["detail"] == detail, body["detail"]
    else:
        assert detail in body["detail"], body["detail"]
    return body
