"""``ops.lag`` against the real Kafka: the consumer group's lag, log-end offsets, and the
wait for zero lag (its timeout, its samples, and its end once the group has committed).
No worker: the test commits the group's offsets itself, in a namespace of its own."""
from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from localenv.workload import produce
from ops.lag import LagMonitor, consumer_lag, wait_caught_up
from ops.schema import create_topics_async, drop_namespace
from tests.integration.pipeline_harness import isolated_settings


def tweet(i: int) -> dict:
    return {"type": "tweet_posted", "tweet_id": 10**15 + i, "author_id": 1000 + i, "text": f"t{i}",
            "created_at": 1_715_000_000_000 + i}


def follow(i: int) -> dict:
    return {"type": "followed", "follower_id": 2000 + i, "followee_id": 1000 + i, "at": 1_715_000_000_000}


async def commit_to_the_end(settings, topics: list[str]) -> None:
    """What a worker that processed everything would have committed."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.app_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        async with LagMonitor(settings, topics) as monitor:
            tps = await monitor.partitions(topics)
        consumer.assign(tps)
        await consumer.commit(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def test_lag_counts_uncommitted_messages_until_the_group_commits(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path)
    await create_topics_async(settings, partitions=settings.topic_partitions)
    try:
        await produce(settings, [tweet(i) for i in range(5)] + [follow(i) for i in range(3)])
        expected = {settings.topic_tweets: 5, settings.topic_follows: 3, settings.topic_activity: 0,
                    settings.topic_deliveries: 0}
        assert await consumer_lag(settings) == expected
        async with LagMonitor(settings) as monitor:
            assert await monitor.lag() == expected
            assert await monitor.end_offsets([settings.topic_tweets]) == {settings.topic_tweets: 5}
            seen: list[int] = []
            with pytest.raises(TimeoutError, match="still behind"):
                await monitor.wait_zero(timeout=1.0, interval=0.2, progress=seen.append)
            assert seen and set(seen) == {8}
        with pytest.raises(KafkaError):
            await consumer_lag(settings, [f"{settings.topic_tweets}-missing"])

        await commit_to_the_end(settings, [settings.topic_tweets, settings.topic_follows])
        assert sum((await consumer_lag(settings)).values()) == 0
        async with LagMonitor(settings) as monitor:
            done = await monitor.wait_zero(timeout=30, settle=0.5, interval=0.1)
        assert done.peak_lag == 0 and done.zero_at <= done.settled_at and done.settled_at - done.zero_at >= 0.5
        assert done.samples and all(total == 0 for _, total in done.samples)
        assert 0.5 <= await wait_caught_up(settings, timeout=30, settle=0.5) < 30
    finally:
        await drop_namespace(settings)
