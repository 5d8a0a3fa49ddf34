"""Consumer lag of the pipeline's consumer group: how far the agents are behind the log."""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from schemas import source_topics
from settings import Settings


def pipeline_topics(settings: Settings) -> list[str]:
    return [*source_topics(settings), settings.topic_deliveries]


async def consumer_lag(settings: Settings, topics: Iterable[str] | None = None) -> dict[str, int]:
    """Messages not yet committed by the app's consumer group, per topic."""
    topics = list(topics or pipeline_topics(settings))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        committed = await admin.list_consumer_group_offsets(settings.app_id)
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - no public call
        tps = []
        for t in topics:
            partitions = cluster.partitions_for_topic(t)
            if not partitions:
                raise KafkaError(f"topic {t!r} has no partitions (does it exist?)")
            tps.extend(TopicPartition(t, p) for p in sorted(partitions))
        ends = await consumer.end_offsets(tps)
        lag: dict[str, int] = {t: 0 for t in topics}
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag[tp.topic] += max(0, ends[tp] - done)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def wait_caught_up(
    settings: Settings, *, timeout: float = 300.0, settle: float = 2.0,
    check: Callable[[], None] | None = None, progress: Callable[[int], None] | None = None,
) -> float:
    """Wait until the group has no lag on every pipeline topic, twice ``settle`` seconds apart.

    Deliveries are produced by the first stage while it works, so zero lag must
    hold on two checks in a row. ``progress`` gets the total lag of every check.
    Returns the seconds waited; raises TimeoutError.
    """
    began = time.monotonic()
    zero_since: float | None = None
    last: dict[str, int] = {}
    while time.monotonic() - began < timeout:
        if check is not None:
            check()  # e.g. raise if the worker died
        try:
            last = await consumer_lag(settings)
        except KafkaError as exc:  # e.g. the group coordinator is still loading
            last = {"error": repr(exc)}  # type: ignore[dict-item]
            await asyncio.sleep(1.0)
            continue
        if progress is not None:
            progress(sum(last.values()))
        if sum(last.values()) == 0:
            if zero_since is None:
                zero_since = time.monotonic()
            elif time.monotonic() - zero_since >= settle:
                return time.monotonic() - began
        else:
            zero_since = None
        await asyncio.sleep(0.5)
    raise TimeoutError(f"pipeline still behind after {timeout:.0f}s: lag {last}")
