"""The fetch settings ``streams/fetch_gather`` changes, on the installed aiokafka against the real
Kafka: a consumer whose fetcher was set to gather holds a lone record back until the wait ends;
set back to returning at once, it hands the next record over. This is what fails first if an
aiokafka upgrade renames or stops reading those internals."""
from __future__ import annotations

import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from localenv.workload import produce
from ops.schema import create_topics_async, drop_namespace
from policies.fetch_gather import AT_ONCE, GATHER_MIN_BYTES
from streams.fetch_gather import apply
from tests.integration.pipeline_harness import isolated_settings

WAIT_MS = 3000


def tweet(i: int) -> dict:
    return {"type": "tweet_posted", "tweet_id": 10**15 + i, "author_id": 1000, "text": f"t{i}",
            "created_at": 1_715_000_000_000 + i}


async def one_record(consumer: AIOKafkaConsumer) -> float:
    """Seconds until the consumer hands a record over."""
    began = time.monotonic()
    while time.monotonic() - began < 30:
        batches = await consumer.getmany(timeout_ms=100)
        if any(batches.values()):
            return time.monotonic() - began
    raise AssertionError("no record within 30 s")


async def test_a_gathering_fetch_waits_and_an_at_once_fetch_does_not_hold_records(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path)
    await create_topics_async(settings, partitions=settings.topic_partitions)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assert apply(consumer._fetcher, (WAIT_MS, GATHER_MIN_BYTES))  # before any fetch is built
        tps = [TopicPartition(settings.topic_tweets, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        await produce(settings, [tweet(1)])
        # The broker holds the fetch until WAIT_MS pass (1 MiB never arrives): a fetch sent at
        # assignment returns well after the record was acked.
        assert await one_record(consumer) >= 1.0
        assert apply(consumer._fetcher, AT_ONCE)
        assert (consumer._fetcher._fetch_max_wait_ms, consumer._fetcher._fetch_min_bytes) == AT_ONCE
        await produce(settings, [tweet(2)])
        await one_record(consumer)  # (a gathering fetch may still be in flight: no bound on the time)
    finally:
        await consumer.stop()
        await drop_namespace(settings)
