"""After the whole suite, a worker on the default settings still works (runs last).

The failure this guards against: a unit test produced through the Faust app of the
default settings, the broker auto-created ``home-timeline-recipients-changelog`` with its
default of 8 partitions, and a worker started later as the README says dead-lettered every
``user-activity`` event (``PartitionsMismatch``).

Why not simply run a worker on the default namespace here: on a developer's machine the
default topics, consumer group and keyspace hold the user's real data (and maybe a real
worker). A test worker in that group would consume and commit the real backlog, and a
tweet produced to the real log stays there forever (infinite retention): the house rule is
that no test touches the default namespace. What a default worker depends on is checked
instead, read-only, and the worker itself runs with the default settings in a namespace
of its own:

1. Nothing outside the test namespaces changed during the session (``namespace_guard``):
   no topic created, deleted or repartitioned, no record written to the service's own
   topics (``tweets`` ... ``dead-letters``, ``home-timeline-*``), no offset committed by
   its consumer group. The recorded failure (a changelog created by a unit test, records
   sent to ``timeline-deliveries``) fails here.
2. The default namespace is as a default worker needs it: the five topics exist (``./dev
   services up`` creates them) with the same partition count, and every changelog Faust
   keeps for the default app id has that count too: the condition Faust reports as
   ``PartitionsMismatch``, whichever session broke it.
3. A worker with the default settings but its own namespace names (``Settings.isolated``),
   started as the README's command starts it, on the broker as the suite leaves it
   (topic auto-creation off: the worker creates its changelogs itself), delivers a tweet
   to a follower's timeline.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from localenv.worker import Worker
from localenv.workload import produce
from settings import get_settings
from tests.integration.namespace_guard import SNAPSHOT, BrokerSnapshot, changes, own_topic, snapshot
from tests.integration.pipeline_harness import drop, isolated_settings, provision, reader_for


@pytest.mark.last
async def test_after_the_whole_suite_a_default_worker_still_works(request: pytest.FixtureRequest, tmp_path) -> None:
    default = get_settings()
    before = request.config.stash.get(SNAPSHOT, None)
    assert isinstance(before, BrokerSnapshot), f"no snapshot of the broker at the session's start: {before!r}"
    after = await snapshot(default)

    # 1. The session left the service's namespace alone.
    touched = changes(before, after)
    assert not touched, "tests touched the service's own namespace:\n" + "\n".join(touched)

    # 2. A default worker finds its topics, and Faust's changelogs match them.
    sources = [default.topic_tweets, default.topic_follows, default.topic_activity, default.topic_deliveries]
    missing = [t for t in sources + [default.topic_dead_letters] if t not in after.partitions]
    assert not missing, f"missing {missing}: `./dev services up` creates them"
    counts = {t: after.partitions[t] for t in sources}
    assert len(set(counts.values())) == 1, f"source topics differ in partitions: {counts}"
    (n,) = set(counts.values())
    mismatched = {t: p for t, p in after.partitions.items()
                  if own_topic(default, t) and t.endswith("-changelog") and p != n}
    assert not mismatched, f"changelogs of {default.app_id!r} without the sources' {n} partitions: {mismatched}"

    # 3. A worker on the default settings, in a namespace of its own, delivers a tweet.
    settings = isolated_settings(tmp_path)
    assert {k: v for k, v in vars(settings).items() if k not in NAMESPACE_FIELDS} == \
        {k: v for k, v in vars(default).items() if k not in NAMESPACE_FIELDS}
    provision(settings)
    unique = uuid.uuid4().int
    author, follower = unique % 10**15 * 10 + 1, unique % 10**15 * 10 + 2
    tweet = (unique % 2**40) << 22  # a Snowflake-sized id
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        now = int(time.time() * 1000)
        await produce(settings, [
            {"type": "followed", "follower_id": follower, "followee_id": author, "at": now - 1},
            {"type": "tweet_posted", "tweet_id": tweet, "author_id": author, "text": "after the suite",
             "created_at": now},
        ])
        async with reader_for(settings) as reader:
            for _ in range(240):
                worker.check()
                if await reader.all_ids(follower) == [tweet]:
                    break
                await asyncio.sleep(0.25)
            else:
                raise AssertionError(f"the tweet did not reach the follower in 60 s:\n{worker.log_tail()}")
    finally:
        worker.stop()
        drop(settings)


# What Settings.isolated changes: the names of the namespace, its partition count and the
# RocksDB folder; everything else is the default settings.
NAMESPACE_FIELDS = {
    "topic_tweets", "topic_follows", "topic_activity", "topic_deliveries", "topic_dead_letters",
    "topic_partitions", "cassandra_keyspace", "postgres_schema", "redis_prefix", "app_id", "faust_datadir",
}
