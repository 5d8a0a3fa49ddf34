"""What a test session did to the broker outside the test namespaces.

``snapshot`` records, read-only: the partition count of every topic (Kafka's own ``__*``
topics aside), the end offsets of the service's own topics (the five of the settings and
the ``<app id>-*`` topics Faust creates: changelogs, the assignor's) and the committed
offsets of the service's consumer group. ``changes`` lists what differs between two
snapshots, ignoring topics of the test and benchmark namespaces (``TEST_PREFIXES``).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError, NotCoordinatorError
from aiokafka.structs import TopicPartition

from settings import Settings

# Topics of test and benchmark namespaces: Settings.isolated("it" | "bench" | "million",
# ...) and the tests' own scratch topics (it-roundtrip_..., it-doc-..., it-post-...).
TEST_PREFIXES = ("it-", "bench-", "million-")
# Where tests/conftest.py keeps the snapshot taken before the session's first test (or
# the exception that prevented it).
SNAPSHOT = pytest.StashKey[object]()


def own_topic(settings: Settings, topic: str) -> bool:
    """A topic of the service's own namespace (what a worker on these settings uses)."""
    return topic in {settings.topic_tweets, settings.topic_follows, settings.topic_activity,
                     settings.topic_deliveries, settings.topic_dead_letters} or topic.startswith(f"{settings.app_id}-")


@dataclass(frozen=True)
class BrokerSnapshot:
    partitions: dict[str, int]  # topic -> partition count
    ends: dict[str, int] = field(default_factory=dict)  # own topic -> sum of its end offsets
    committed: dict[str, int] = field(default_factory=dict)  # own group: topic -> sum of committed offsets


async def snapshot(settings: Settings) -> BrokerSnapshot:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        names = [t for t in await admin.list_topics() if not t.startswith("__")]
        described = await admin.describe_topics(names) if names else []
        partitions = {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}
        own = [TopicPartition(t, p) for t, n in partitions.items() if own_topic(settings, t) for p in range(n)]
        ends: dict[str, int] = dict.fromkeys({tp.topic for tp in own}, 0)
        for tp, end in (await consumer.end_offsets(own) if own else {}).items():
            ends[tp.topic] += end
        committed: dict[str, int] = {}
        for tp, meta in (await _group_offsets(admin, settings.app_id)).items():
            committed[tp.topic] = committed.get(tp.topic, 0) + max(meta.offset, 0)
        return BrokerSnapshot(partitions, ends, committed)
    finally:
        await consumer.stop()
        await admin.close()


async def _group_offsets(admin: AIOKafkaAdminClient, group: str, wait_s: float = 60.0) -> dict:
    """The group's committed offsets. On a fresh broker the group coordinator (Kafka's
    ``__consumer_offsets`` topic) is created by the first request and is unavailable for a
    few seconds: that retriable error is waited out, for at most ``wait_s``."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            return await admin.list_consumer_group_offsets(group)
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


def changes(before: BrokerSnapshot, after: BrokerSnapshot) -> list[str]:
    out = []
    for topic in sorted(before.partitions.keys() | after.partitions.keys()):
        if topic.startswith(TEST_PREFIXES):
            continue
        was, now = before.partitions.get(topic), after.partitions.get(topic)
        if was is None:
            out.append(f"topic {topic} was created ({now} partitions)")
        elif now is None:
            out.append(f"topic {topic} was deleted")
        elif was != now:
            out.append(f"topic {topic} went from {was} to {now} partitions")
    for topic in sorted(before.ends.keys() & after.ends.keys()):
        if before.ends[topic] != after.ends[topic]:
            out.append(f"{after.ends[topic] - before.ends[topic]} records were written to {topic}")
    if before.committed != after.committed:
        out.append(f"the service's consumer group committed offsets: {before.committed} -> {after.committed}")
    return out
