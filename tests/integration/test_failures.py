"""Errors classified against the real servers: a store that refuses one event costs that event
only (dead-lettered, the rest delivered); a systemic fault stops the worker loudly (exit 78)
instead of draining the log into the dead-letter topic."""
from __future__ import annotations

import asyncio
import time

import httpx
import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from localenv.worker import Worker
from localenv.workload import produce
from ops.lag import wait_caught_up
from tests.integration.pipeline_harness import drop, isolated_settings, provision, reader_for
from tests.integration.test_pipeline_correctness import read_dead_letters

T0 = 1_750_000_000_000


def tweet(tweet_id: int, author: int, text: str) -> dict:
    return {"type": "tweet_posted", "tweet_id": tweet_id, "author_id": author, "text": text, "created_at": T0}


async def pg(settings, sql: str, *params) -> list:
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True,
                                                     **settings.postgres_kwargs()) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall() if cur.description else []


async def test_an_event_postgresql_refuses_is_dead_lettered_and_the_rest_is_delivered(tmp_path):
    settings = isolated_settings(tmp_path)
    provision(settings)
    # A rule of this deployment's PostgreSQL that the event contract does not know: the
    # fanout stage's claim (and the projection's insert) meets a real, permanent refusal
    # (CheckViolation) for one event. PostgreSQL is the tweets' source of truth: the tweet
    # it refuses is stored nowhere; the rest of the batch is delivered and projected.
    await pg(settings, "ALTER TABLE tweets ADD CONSTRAINT no_pill CHECK (position('poison pill' in text) = 0)")
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        events = [{"type": "followed", "follower_id": 2, "followee_id": 1, "at": T0}]
        events += [tweet(100 + i, 1, "poison pill" if i == 7 else f"tweet {i}") for i in range(20)]
        await produce(settings, events)
        await wait_caught_up(settings, timeout=90, check=worker.check)
        letters = await read_dead_letters(settings, expect=2)
        for stage in ("fanout", "projection"):
            [letter] = [d for d in letters if d["stage"] == stage]
            assert letter["reason"].startswith("refused by a store: CheckViolation"), letter
            assert '"tweet_id":107' in letter["value_head"]
        rows = await pg(settings, "SELECT tweet_id FROM tweets ORDER BY tweet_id")
        assert [r[0] for r in rows] == [100 + i for i in range(20) if i != 7]
        async with reader_for(settings) as reader:
            assert await reader.all_ids(2, page_size=50) == [100 + i for i in reversed(range(20)) if i != 7]
        worker.check()
    finally:
        worker.stop()
        drop(settings)


async def _exit_code(worker: Worker, timeout: float) -> int | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and worker.alive():
        await asyncio.sleep(0.2)
    return None if worker.alive() else worker.proc.returncode


async def test_a_changelog_with_the_wrong_partition_count_stops_the_worker_loudly(tmp_path):
    settings = isolated_settings(tmp_path)
    provision(settings)  # source topics: 4 partitions
    # What a unit test once did to the real broker: the recipients table's changelog
    # exists with another partition count than its source topics.
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{settings.app_id}-recipients-changelog", 8, 1)])
    finally:
        await admin.close()
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        await produce(settings, [{"type": "user_active", "user_id": u, "at": T0} for u in range(1, 30)])
        code = await _exit_code(worker, timeout=90)
        log = worker.log_tail(400)
        assert code == 78, f"worker still running or exited with {code}:\n{log}"
        stopped = [line for line in log.splitlines() if "WORKER STOPPED" in line]
        assert stopped and "PartitionsMismatch" in stopped[0], log
        assert await read_dead_letters(settings, expect=1, timeout=3) == [], "the stream was dead-lettered"
    finally:
        worker.stop()
        drop(settings)


async def test_health_check_reports_a_store_that_is_down(tmp_path):
    # PostgreSQL at a closed port: the fanout stage's claim of the tweet and the projection
    # retry (transient), and the health check names both.
    settings = isolated_settings(tmp_path)
    provision(settings)
    dead_pg = settings.replace(postgres_dsn="postgresql://timeline:timeline@127.0.0.1:9/timeline")
    worker = Worker(dead_pg, tmp_path / "worker.log").start()
    expected = {"claim tweets", "postgres projection"}
    try:
        await produce(settings, [tweet(500, 1, "waits for postgres")])
        url = f"http://127.0.0.1:{worker.web_port}/healthz"
        body: dict = {}
        async with httpx.AsyncClient() as client:
            for _ in range(120):
                try:
                    resp = await client.get(url)
                    body = resp.json()
                    if resp.status_code == 503 and expected <= {r["what"] for r in body["retrying"]}:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
            assert body and body["status"] == "waiting_for_stores", body
            assert expected <= {r["what"] for r in body["retrying"]}, body
            metrics = (await client.get(f"http://127.0.0.1:{worker.web_port}/metrics")).text
        for what in expected:
            assert f'timeline_store_retrying{{what="{what}"}} 1.0' in metrics
        worker.check()
    finally:
        worker.stop()
        drop(settings)
