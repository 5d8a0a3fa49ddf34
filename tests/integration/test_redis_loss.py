"""Redis is only a cache: lose any of its keys at any moment - a restart without persistence
(FLUSHALL), a flush in the middle of a load, eviction under ``maxmemory`` with
``allkeys-lru`` - and every home timeline still equals the reference.

The test runs its own ``redis-server`` (``private_redis`` in ``conftest.py``), so that it can
flush, starve and kill it without touching the Redis other tests share.
"""
from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from localenv.worker import Worker
from localenv.workload import generate, produce
from ops.lag import wait_caught_up
from ops.schema import drop_namespace
from policies.reference import reference_home_timelines
from tests.integration.pipeline_harness import diff_timelines, isolated_settings, provision, reader_for


@pytest.mark.slow
async def test_timelines_survive_flushes_and_eviction(tmp_path, private_redis):
    redis_url, redis_proc = private_redis
    settings = isolated_settings(tmp_path, celebrity_threshold=20, celebrity_hysteresis=5, timeline_cap=60,
                                 backfill_limit=25, redis_url=redis_url)
    provision(settings)
    workload = generate(31, users=120, tweets=1200, celebrity_threshold=20)
    expected = reference_home_timelines(workload.events)
    redis = Redis.from_url(redis_url)
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        half = len(workload.events) // 2
        await produce(settings, workload.events[:half])
        await wait_caught_up(settings, timeout=300, check=worker.check)

        # A flush in the middle of a load: the second half is processed while Redis loses
        # everything every 0.3 s and readers keep refilling it.
        stop = asyncio.Event()
        flushes = 0

        async def flusher(reader) -> None:
            nonlocal flushes
            users = sorted(expected)
            i = 0
            while not stop.is_set():
                await redis.flushall()
                flushes += 1
                for user_id in users[i:i + 10]:
                    await reader.page(user_id, limit=20)
                i = (i + 10) % len(users)
                await asyncio.sleep(0.3)

        async with reader_for(settings) as reader:
            task = asyncio.create_task(flusher(reader))
            try:
                await produce(settings, workload.events[half:])
                await wait_caught_up(settings, timeout=300, check=worker.check)
            finally:
                stop.set()
                await task
            assert flushes >= 3
            pulled_celebrities = await redis.scard(f"{settings.redis_prefix}celebrities")

            diffs = await diff_timelines(reader, expected)  # cold after the last flush, then refilled
            assert diffs == {}, f"after flushes during the load: {len(diffs)} users differ: {list(diffs.items())[:3]}"
            diffs = await diff_timelines(reader, expected)  # from the caches that pass filled
            assert diffs == {}, f"from the refilled caches: {len(diffs)} users differ"
            assert await redis.scard(f"{settings.redis_prefix}celebrities") > 1, "the celebrity set was refilled"

            # A restart without persistence, after convergence: the case that once lost 56 of 60.
            await redis.flushall()
            diffs = await diff_timelines(reader, expected, page_size=50)
            assert diffs == {}, f"after FLUSHALL: {len(diffs)} users differ: {list(diffs.items())[:3]}"

            # Memory pressure: a maxmemory 100 KiB above an empty server's use, allkeys-lru
            # evicting timelines, tweet bodies, following lists and the celebrity set while
            # reads refill them (the data set is several times that).
            await redis.flushall()
            used = int((await redis.info("memory"))["used_memory"])
            await redis.config_set("maxmemory", str(used + 100 * 1024))
            for _ in range(2):
                diffs = await diff_timelines(reader, expected, page_size=17)
                assert diffs == {}, f"under eviction: {len(diffs)} users differ: {list(diffs.items())[:3]}"
            evicted = int((await redis.info("stats"))["evicted_keys"])
            assert evicted > 100, f"only {evicted} keys were evicted: no memory pressure"

            # Redis down: every read is answered from Cassandra alone, with the same answer.
            redis_proc.kill()
            redis_proc.wait(10)
            diffs = await diff_timelines(reader, expected, page_size=29)
            assert diffs == {}, f"with Redis down: {len(diffs)} users differ: {list(diffs.items())[:3]}"
        assert pulled_celebrities is not None
        assert worker.alive(), worker.log_tail()
    finally:
        worker.stop()
        await redis.aclose()
        # The private Redis is gone with its keys; everything else of the namespace is dropped.
        done = await drop_namespace(settings)
        assert not [k for k in done if k.endswith("_error") and k != "redis_error"], done
