"""The split worker layout (policies/worker_layout.py) under a crash: both processes SIGKILLed
in the middle of a fanout-heavy workload (no shutdown, no final commit), started again on
their RocksDB folders, and after catch-up the timelines equal the reference.

Each role is a consumer group of its own that acks a batch only after its writes, so each
replays from its own committed offsets; the stages meet only on the deliveries topic, whose
messages stage 1 published (acks=all) before acking the tweets they came from.
"""
from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from localenv.worker import Worker
from localenv.workload import generate, produce
from ops.lag import committed_offsets, consumer_lag, wait_caught_up
from ops.verify import verify
from tests.integration.pipeline_harness import drop, isolated_settings, provision


@pytest.mark.slow
async def test_sigkill_of_a_split_worker_loses_nothing(tmp_path):
    settings = isolated_settings(tmp_path, worker_layout="split", topic_partitions=4, celebrity_threshold=1000,
                                 celebrity_hysteresis=100, timeline_cap=80, backfill_limit=40,
                                 deliver_chunk_rows=16)  # the kill lands between a batch's chunks
    provision(settings)
    workload = generate(5, users=160, tweets=2400, celebrities=1, celebrity_threshold=40, inactive_share=0.1)
    half = len(workload.events) // 2
    worker = Worker(settings, tmp_path / "w.log").start()
    again = None
    try:
        assert set(worker.procs) == {"fanout", "deliver"}
        await produce(settings, workload.events[:half])
        # Kill while both stages work: some of the first half processed, not all of it.
        for _ in range(300):
            lag = await consumer_lag(settings)
            if 0 < sum(lag.values()) < half and lag[settings.topic_deliveries] > 0:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"never caught both stages at work: {lag}")
        assert worker.alive(), worker.log_tail()
        worker.kill()
        await produce(settings, workload.events[half:], workload.poison)
        again = Worker(settings, tmp_path / "again.log").start()
        await wait_caught_up(settings, timeout=600, check=again.check)
        # Each role committed its own topics, in its own group.
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            for group, topics in settings.worker_groups().items():
                own = await admin.list_consumer_group_offsets(group)
                assert {tp.topic for tp in own} == set(topics), group
            assert len(await committed_offsets(admin, settings)) == 4 * settings.topic_partitions
        finally:
            await admin.close()
        report = await verify(settings, page_size=60)
        assert report.entries > 1500
        assert report.diffs == {}, f"{len(report.diffs)} users differ: {list(report.diffs.items())[:3]}"
    finally:
        for w in (worker, again):
            if w is not None:
                w.stop()
        drop(settings)
