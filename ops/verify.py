"""Verify the materialized timelines against the reference computed from the log.

    python -m ops.verify [--sample N] [--seed S] [--page-size N]

Reads the source topics (tweets, follows, user-activity) from the beginning to
their current end, computes every user's reference home timeline (the newest
tweets of current followees, minus deletes: ``policies.reference``), reads each
user's home timeline through the product's reader to its real end, and prints
the users whose timelines differ. Exit code 0 when there are none.

On a live system, run it when the pipeline has caught up (``ops.lag``): events
published after the snapshot of end offsets are not in the reference.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
from dataclasses import dataclass, field
from typing import Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from policies.reference import ReferenceModel
from query.reader import HomeTimelineReader
from schemas import ALL_EVENTS, ContractError, decode, source_topics
from settings import Settings, get_settings
from sinks.cassandra import CassandraStore
from sinks.redis_client import connect
from sinks.redis_timeline import RedisTimelines


async def read_log(settings: Settings, topics: Iterable[str] | None = None) -> list:
    """Every valid event of the source topics up to their current end, per partition in log order."""
    topics = list(topics or source_topics(settings))
    consumer = AIOKafkaConsumer(**settings.kafka_kwargs(), enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=5000)
    await consumer.start()
    events: list = []
    try:
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - no public call
        tps = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    try:
                        events.append(decode(record.value, ALL_EVENTS))
                    except ContractError:
                        pass  # dead-lettered by the pipeline; not part of the reference
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return events


@dataclass
class Report:
    users: int = 0
    entries: int = 0
    diffs: dict[int, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.diffs


def describe(got: list[int], want: list[int]) -> dict:
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return {
        "got": len(got), "want": len(want), "first_difference_at": first,
        "missing": len(set(want) - set(got)), "unexpected": len(set(got) - set(want)),
    }


async def verify(settings: Settings, *, sample: int | None = None, seed: int = 0,
                 page_size: int = 200, reader: HomeTimelineReader | None = None,
                 log_settings: Settings | None = None) -> Report:
    """The timelines of ``settings``' stores against the reference of its log, or of
    ``log_settings``' log (another region's: its primary's log is the one every region
    must match)."""
    model = ReferenceModel(validate=False)
    for event in await read_log(log_settings or settings):
        model.apply(event)
    users = sorted(model.users())
    if sample is not None and sample < len(users):
        users = sorted(random.Random(seed).sample(users, sample))
    own = reader is None
    if own:
        store = await asyncio.to_thread(CassandraStore.open, settings)
        redis = connect(settings)
        reader = HomeTimelineReader(settings, store, RedisTimelines.from_settings(redis, settings))
    report = Report(users=len(users))
    try:
        for user_id in users:
            want = model.home_timeline(user_id)
            got = await reader.all_ids(user_id, page_size=page_size)
            report.entries += len(want)
            if got != want:
                report.diffs[user_id] = describe(got, want)
    finally:
        if own:
            await redis.aclose()
            await asyncio.to_thread(store.close)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=None, help="check N random users instead of all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--page-size", type=int, default=200)
    args = parser.parse_args(argv)
    report = asyncio.run(verify(get_settings(), sample=args.sample, seed=args.seed, page_size=args.page_size))
    for user_id, diff in sorted(report.diffs.items()):
        print(f"user {user_id}: {diff}")
    print(f"verified {report.users} users, {report.entries} timeline entries: "
          f"{len(report.diffs)} differ")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
