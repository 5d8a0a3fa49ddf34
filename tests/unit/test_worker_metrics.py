"""The worker's metrics (agents/metrics.py): what the agents count, and consumer lag."""
from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

import agents.deliver as deliver_mod
import agents.fanout as fanout_mod
from agents.metrics import ConsumerLagCollector, consumer_lag, observe_fanout_lag
from faust.types import TP
from faust_app import settings
from policies.celebrity import CelebrityRule
from schemas import TweetPosted, UserFollowed
from tests.unit.agent_doubles import AgentDriver, msg_for
from tests.unit.test_agents_deliver import T0, DAY, active, add, ops_msg, remove, users_on_one_partition


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def deliveries() -> dict[str, float]:
    return {o: sample("timeline_deliveries_total", outcome=o)
            for o in ("pushed", "skipped_inactive", "removed", "backfilled", "rebuilt")}


@pytest.fixture
def deliver_driver(monkeypatch: pytest.MonkeyPatch) -> AgentDriver:
    monkeypatch.setattr(deliver_mod, "settings", settings.replace(inactive_after_ms=30 * DAY))
    return AgentDriver(deliver_mod.deliver, deliver_mod, "process_recipient_batch", monkeypatch,
                       begin_fn="begin_recipient_batch")


async def test_stage_two_counts_rows_by_outcome_and_observes_the_lag(deliver_driver: AgentDriver, sinks: Any,
                                                                     sent: Any) -> None:
    fresh, idle = users_on_one_partition(2, start=7000)
    await deliver_driver.run([active(idle, T0 - 31 * DAY)])
    before, lag_before = deliveries(), sample("timeline_fanout_lag_seconds_count")
    batches_before = sample("timeline_batch_seconds_count", stage="deliver")

    await deliver_driver.run([ops_msg(add(10, [fresh, idle]), add(11, [fresh]), remove(10, [fresh]))])

    after = deliveries()
    assert {k: after[k] - before[k] for k in after} == {
        "pushed": 2, "skipped_inactive": 1, "removed": 1, "backfilled": 0, "rebuilt": 0,
    }
    assert sample("timeline_fanout_lag_seconds_count") - lag_before == 2  # one per add op
    assert sample("timeline_batch_seconds_count", stage="deliver") - batches_before == 1


async def test_stage_one_counts_pushed_and_pulled_tweets(monkeypatch: pytest.MonkeyPatch, sinks: Any, sent: Any) -> None:
    driver = AgentDriver(fanout_mod.fanout, fanout_mod, "process_author_batch", monkeypatch)
    monkeypatch.setattr(fanout_mod, "RULE", CelebrityRule(threshold=2, hysteresis=1))
    star, plain = 9001, 9002
    pushed, pulled = sample("timeline_fanout_tweets_total", plan="pushed"), sample("timeline_fanout_tweets_total", plan="pulled")
    await driver.run([
        msg_for(settings.topic_follows, star, UserFollowed(41, star, T0)),
        msg_for(settings.topic_follows, star, UserFollowed(42, star, T0)),  # 2 followers: a celebrity
        msg_for(settings.topic_follows, plain, UserFollowed(41, plain, T0)),
        *(msg_for(settings.topic_tweets, a, TweetPosted(100 + i, a, "hi", T0)) for i, a in enumerate([star, plain, plain])),
    ])
    assert sample("timeline_fanout_tweets_total", plan="pushed") - pushed == 2
    assert sample("timeline_fanout_tweets_total", plan="pulled") - pulled == 1


def test_fanout_lag_is_measured_from_created_at() -> None:
    count, total = sample("timeline_fanout_lag_seconds_count"), sample("timeline_fanout_lag_seconds_sum")
    observe_fanout_lag([1_000, 1_500, 9_000], now_ms=2_000)  # a clock behind the producer's counts 0
    assert sample("timeline_fanout_lag_seconds_count") - count == 3
    assert sample("timeline_fanout_lag_seconds_sum") - total == pytest.approx(1.0 + 0.5 + 0.0)


class FakeConsumer:
    def __init__(self, ends: dict[TP, int | None], committed: dict[TP, int]) -> None:
        self.ends, self._committed_offset = ends, committed

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int | None:
        return self.ends[tp]


def test_consumer_lag_covers_owned_source_partitions_only() -> None:
    tweets0, tweets1, tweets2 = TP("tweets", 0), TP("tweets", 1), TP("tweets", 2)
    changelog = TP("app-authors-changelog", 0)
    consumer = FakeConsumer(
        {tweets0: 120, tweets1: 50, tweets2: None, changelog: 900},
        {tweets0: 100, changelog: 10},  # Kafka's committed offset: the next one to read
    )
    assert consumer_lag(consumer, frozenset({"tweets"})) == {
        ("tweets", 0): 20,
        ("tweets", 1): 50,  # nothing committed yet: all of it
    }, "partitions without a known end are left out, and changelogs are not consumer lag"

    class App:
        pass

    app = App()
    app.consumer = consumer  # type: ignore[attr-defined]
    family = next(iter(ConsumerLagCollector(app, ["tweets"]).collect()))
    assert {(s.labels["partition"], s.value) for s in family.samples} == {("0", 20), ("1", 50)}


def test_garbage_collector_pauses_are_timed_by_generation() -> None:
    import gc

    from agents.metrics import GcPauses, watch_gc

    watch_gc()
    watch_gc()  # installed once
    assert sum(isinstance(cb, GcPauses) for cb in gc.callbacks) == 1
    before = {g: sample("timeline_gc_pause_seconds_count", generation=str(g)) for g in (0, 2)}
    gc.collect(0)
    gc.collect(2)
    assert sample("timeline_gc_pause_seconds_count", generation="0") >= before[0] + 1
    assert sample("timeline_gc_pause_seconds_count", generation="2") >= before[2] + 1
