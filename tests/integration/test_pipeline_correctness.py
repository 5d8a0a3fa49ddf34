"""The correctness rule, end to end against the real servers.

A seeded random workload (celebrities crossing the threshold both ways, inactive
users coming back, follows, unfollows, refollows, deletes before and after their
tweet, poison messages) goes through Kafka into a real worker; after catch-up
every user's home timeline, paged to its real end through the query service's
HTTP API (cold cache, then again after the reads' own activity events were
processed) and through its engine (``query.reader``), must equal the reference
computed from the events alone.
"""
from __future__ import annotations

import asyncio

import httpx
import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from localenv.worker import Worker
from localenv.workload import generate, produce
from ops.lag import wait_caught_up
from policies.reference import reference_home_timelines
from tests.integration.pipeline_harness import (
    diff_timelines, diff_timelines_http, drop, isolated_settings, provision, query_client, reader_for,
)

# (seed, worker layout): both layouts of policies/worker_layout.py keep the rule.
CASES = [(11, "one"), (23, "one"), (37, "split")]


async def read_dead_letters(settings, expect: int, timeout: float = 30.0) -> list[dict]:
    consumer = AIOKafkaConsumer(settings.topic_dead_letters, bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[dict] = []
    try:
        end = asyncio.get_running_loop().time() + timeout
        while len(out) < expect and asyncio.get_running_loop().time() < end:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(orjson.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return out


async def assert_postgres_projection(settings, events) -> None:
    """The PostgreSQL projection holds every tweet of the log, deletes marked, and the follow set."""
    posted = {e["tweet_id"] for e in events if e["type"] == "tweet_posted"}
    deleted = {e["tweet_id"] for e in events if e["type"] == "tweet_deleted"}
    follows: dict[tuple[int, int], bool] = {}
    for e in events:
        if e["type"] in ("followed", "unfollowed"):
            follows[(e["follower_id"], e["followee_id"])] = e["type"] == "followed"
    users = sorted({u for pair in follows for u in pair})
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, **settings.postgres_kwargs()) as conn:
        for _ in range(60):  # the projection agent batches; give it a moment
            rows = await (await conn.execute(
                "SELECT tweet_id, deleted_at IS NOT NULL FROM tweets WHERE tweet_id = ANY(%s)",
                (sorted(posted | deleted),))).fetchall()
            if len(rows) == len(posted | deleted):
                break
            await asyncio.sleep(0.5)
        assert {t for t, _ in rows} == posted | deleted
        assert {t for t, gone in rows if gone} == deleted
        pairs = await (await conn.execute(
            "SELECT follower_id, followee_id FROM follows WHERE follower_id = ANY(%s)", (users,))).fetchall()
        assert set(pairs) == {pair for pair, on in follows.items() if on}


async def assert_worker_metrics(worker: Worker, settings, *, dead_letters: int) -> None:
    """The worker's GET /metrics after catch-up (summed over its processes, as Prometheus
    would): what it did, and nothing left behind."""
    samples: dict[tuple, float] = {}
    for port in worker.web_ports.values():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            resp = await client.get("/metrics")
        assert resp.status_code == 200
        for family in text_string_to_metric_families(resp.text):
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                samples[key] = samples.get(key, 0.0) + s.value

    def total(name: str, **match: str) -> float:
        return sum(v for (n, labels), v in samples.items()
                   if n == name and all(dict(labels).get(k) == want for k, want in match.items()))

    assert total("timeline_dead_letters_total") == dead_letters
    assert total("timeline_deliveries_total", outcome="pushed") > 1000
    assert total("timeline_deliveries_total", outcome="skipped_inactive") > 0
    assert total("timeline_fanout_tweets_total", plan="pulled") > 0
    assert total("timeline_fanout_lag_seconds_count") > 0
    lags = {dict(labels)["topic"]: v for (n, labels), v in samples.items() if n == "timeline_consumer_lag_messages"}
    assert set(lags) == {settings.topic_tweets, settings.topic_follows, settings.topic_activity,
                         settings.topic_deliveries}, "lag is reported for the four source topics"
    assert total("timeline_consumer_lag_messages") == 0, "caught up: nothing left to process"


@pytest.mark.slow
@pytest.mark.parametrize("seed,layout", CASES)
async def test_randomized_workload_matches_reference(tmp_path, seed, layout):
    settings = isolated_settings(
        tmp_path, celebrity_threshold=20, celebrity_hysteresis=5, timeline_cap=60, backfill_limit=25,
        deliver_chunk_rows=16,  # stage 2 writes larger batches in chunks (policies/chunks.py)
        worker_layout=layout,
    )
    provision(settings)
    workload = generate(seed, users=150, tweets=1500, celebrity_threshold=20)
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        # In two halves: topics are consumed in no particular order relative to each other, so
        # in one go most tweets could be fanned out before the follows that make their authors
        # celebrities. After the first half the graph exists, and the second half's celebrity
        # tweets take the pull path.
        half = len(workload.events) // 2
        for events, poison in ((workload.events[:half], []), (workload.events[half:], workload.poison)):
            await produce(settings, events, poison)
            try:
                await wait_caught_up(settings, timeout=400, check=worker.check)
            except TimeoutError:
                pytest.fail(f"pipeline did not catch up\n{worker.log_tail()}")
        assert worker.alive(), worker.log_tail()
        await assert_worker_metrics(worker, settings, dead_letters=len(workload.poison))
        expected = reference_home_timelines(workload.events)
        assert sum(map(len, expected.values())) > 1000  # the workload is not trivial
        async with query_client(settings, sorted(expected)) as query:
            # Cold cache: pages come from Cassandra, or are merged on the spot for stale timelines.
            diffs = await diff_timelines_http(query, expected, limit=37)
            assert diffs == {}, f"HTTP: {len(diffs)} users differ, e.g. {list(diffs.items())[:3]}"
            # Those reads were activity: returning users' timelines get rebuilt. After that, and
            # from the cache the first pass filled, every timeline is still the reference.
            await wait_caught_up(settings, timeout=300, check=worker.check)
            diffs = await diff_timelines_http(query, expected, limit=50)
            assert diffs == {}, f"HTTP, second pass: {len(diffs)} users differ, e.g. {list(diffs.items())[:3]}"
            assert {"store", "cache", "rebuilt"} <= set(query.sources), query.sources
        async with reader_for(settings) as reader:
            diffs = await diff_timelines(reader, expected, page_size=23)
            assert diffs == {}, f"{len(diffs)} users differ, e.g. {list(diffs.items())[:3]}"
        await assert_postgres_projection(settings, workload.events)
        letters = await read_dead_letters(settings, len(workload.poison))
        assert len(letters) == len(workload.poison)
        assert all(letter["reason"] for letter in letters)
    finally:
        worker.stop()
        drop(settings)
