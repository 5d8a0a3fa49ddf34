"""Stage 1 (``agents.fanout``) keeps docs/events.md's promises against any producer:
the first post of a tweet id wins in every store, only the author deletes a tweet, and
a delete that comes before its tweet hides it only if the author sent it.

Same machinery as ``test_agents_fanout.py``: Faust's agent test context, in-memory
tables, the store doubles of ``agent_doubles`` (``FakeClaims`` models PostgreSQL's
first-row-wins claim, ``FakeCassandra`` the bodies and delete marks).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import agents.fanout as fanout_mod
from faust_app import settings
from policies.celebrity import CelebrityRule
from policies.partitioning import partition_for_id
from schemas import TweetDeleted, TweetPosted, UserFollowed
from tables.edges import edge_key
from tables.graph import early_deletes
from tests.unit.agent_doubles import AgentDriver, SentLog, SimulatedCrash, msg_for

TWEETS, FOLLOWS = settings.topic_tweets, settings.topic_follows
P = settings.topic_partitions
AUTHOR = 7
# another author on another partition: the repost is decided on another worker's partition
OTHER = next(a for a in range(8, 1000) if partition_for_id(a, P) != partition_for_id(AUTHOR, P))
TID = 5000


def follow(follower: int, followee: int) -> Any:
    return msg_for(FOLLOWS, followee, UserFollowed(follower, followee, 1_000))


def tweet(tweet_id: int, author: int = AUTHOR, text: str = "original", created_at: int = 5_000) -> Any:
    return msg_for(TWEETS, author, TweetPosted(tweet_id, author, text, created_at))


def delete(tweet_id: int, author: int = AUTHOR, deleted_at: int = 9_000) -> Any:
    return msg_for(TWEETS, author, TweetDeleted(tweet_id, author, deleted_at))


def adds(sent: SentLog, tweet_id: int) -> Counter:
    return Counter(u for _, op in sent.delivery_ops("add") if op["tweet_id"] == tweet_id for u in op["to"])


def removes(sent: SentLog, tweet_id: int) -> Counter:
    return Counter(u for _, op in sent.delivery_ops("remove") if op["tweet_id"] == tweet_id for u in op["to"])


def cassandra_row(sinks: Any, tweet_id: int = TID) -> dict:
    return sinks.cassandra.tweets.get(tweet_id, {})


def redis_writes(sinks: Any) -> tuple[list, list]:
    posted = [p for call in sinks.tweets.writes for p in call[0]]
    deleted = [d for call in sinks.tweets.writes for d in call[1]]
    return posted, deleted


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> AgentDriver:
    monkeypatch.setattr(fanout_mod, "RULE", CelebrityRule(threshold=10_000, hysteresis=1_000))
    return AgentDriver(fanout_mod.fanout, fanout_mod, "process_author_batch", monkeypatch)


async def test_a_repost_by_another_author_changes_nothing_and_is_dead_lettered(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    await driver.run([follow(11, AUTHOR), follow(21, OTHER)])
    await driver.run([tweet(TID)])
    assert adds(sent, TID) == Counter({11: 1})
    sent.clear()

    await driver.run([tweet(TID, author=OTHER, text="hijacked", created_at=6_000), tweet(TID + 1, author=OTHER)])

    assert cassandra_row(sinks) == {"author_id": AUTHOR, "text": "original", "created_at": 5_000}
    assert adds(sent, TID) == Counter(), "not pushed to the reposter's followers (nor anyone)"
    assert adds(sent, TID + 1) == Counter({21: 1}), "the reposter's other tweet in the batch goes on"
    assert TID not in sinks.cassandra.author_tl.get(OTHER, set()), "not in the reposter's author timeline"
    assert TID in sinks.cassandra.author_tl[AUTHOR]
    posted, _ = redis_writes(sinks)
    assert [p for p in posted if p[0] == TID] == [(TID, AUTHOR, "original", 5_000)], "the cached body is the first"
    [letter] = sent.dead_letters()
    assert f"tweet_id {TID} is already taken" in letter["reason"] and letter["stage"] == "fanout"
    assert letter["key"] == str(OTHER) and "hijacked" in letter["value_head"]


async def test_a_repost_with_other_text_by_the_same_author_is_a_conflict_too(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    await driver.run([follow(11, AUTHOR)])
    await driver.run([tweet(TID), tweet(TID, text="edited")])  # one batch, log order
    assert cassandra_row(sinks)["text"] == "original"
    assert adds(sent, TID) == Counter({11: 1})
    [letter] = sent.dead_letters()
    assert "already taken" in letter["reason"] and "differs in text" in letter["reason"]


async def test_an_identical_replay_is_processed_as_before(driver: AgentDriver, sinks: Any, sent: SentLog) -> None:
    """A producer retry, or the log replayed after a crash: the same event again."""
    await driver.run([follow(11, AUTHOR)])
    await driver.run([tweet(TID)])
    await driver.run([tweet(TID), tweet(TID)])
    assert adds(sent, TID) == Counter({11: 3}), "pushed again (stage 2 is idempotent)"
    assert sent.dead_letters() == []
    assert sinks.cassandra.writes_named("insert_author_tl").count(("insert_author_tl", (AUTHOR, TID))) == 3
    claims = [c for c in sinks.claims.calls if any(p[0] == TID for p in c)]
    assert [len(c) for c in claims] == [1, 1], "one claim per id and batch"


async def test_replay_after_a_crash_between_the_claim_and_the_publish(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    await driver.run([follow(11, AUTHOR)])
    sent.crash_on_next_send_to = settings.topic_deliveries
    with pytest.raises(SimulatedCrash):
        await driver.run([tweet(TID)])
    assert cassandra_row(sinks)["author_id"] == AUTHOR, "claimed before the crash"
    await driver.run([tweet(TID)])  # redelivered: the claim is not applied, the row is the same
    assert adds(sent, TID) == Counter({11: 1})
    assert sent.dead_letters() == []


async def test_a_delete_by_someone_else_is_dead_lettered_and_changes_nothing(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    await driver.run([follow(11, AUTHOR), follow(21, OTHER)])
    await driver.run([tweet(TID)])
    sent.clear()

    await driver.run([delete(TID, author=OTHER)])

    assert "deleted_at" not in cassandra_row(sinks)
    assert TID in sinks.cassandra.author_tl[AUTHOR]
    assert sinks.cassandra.writes_named("mark_deleted", "delete_author_tl") == []
    assert redis_writes(sinks)[1] == []
    assert removes(sent, TID) == Counter()
    [letter] = sent.dead_letters()
    assert f"tweet_id {TID}" in letter["reason"] and f"names author_id {OTHER}" in letter["reason"]
    assert "only the author" in letter["reason"]
    assert early_deletes.data.get(edge_key(OTHER, TID)) is None, "not kept aside either"

    await driver.run([delete(TID)])  # the author's own delete still works
    assert cassandra_row(sinks)["deleted_at"] == 9_000
    assert removes(sent, TID) == Counter({11: 1})


async def test_an_early_delete_by_the_author_hides_the_tweet_when_it_arrives(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    await driver.run([follow(11, AUTHOR)])
    await driver.run([delete(TID, deleted_at=4_000)])
    assert TID not in sinks.cassandra.tweets, "no row yet: a placeholder would block the post"
    assert redis_writes(sinks) == ([], [])
    assert early_deletes.data[edge_key(AUTHOR, TID)] == b"4000"
    assert sent.dead_letters() == [] and removes(sent, TID) == Counter()

    await driver.run([tweet(TID)])

    assert cassandra_row(sinks) == {"author_id": AUTHOR, "text": "original", "created_at": 5_000, "deleted_at": 4_000}
    assert adds(sent, TID) == Counter(), "deleted on arrival: not pushed"
    assert TID not in sinks.cassandra.author_tl.get(AUTHOR, set())
    posted, deleted = redis_writes(sinks)
    assert posted == [(TID, AUTHOR, "original", 5_000)] and deleted == [(TID, 4_000)]
    assert edge_key(AUTHOR, TID) not in early_deletes.data, "applied, then dropped"

    sent.clear()
    await driver.run([tweet(TID)])  # a replay finds the stored mark
    assert adds(sent, TID) == Counter() and sent.dead_letters() == []


async def test_an_early_delete_by_another_author_never_hides_the_tweet(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    await driver.run([follow(11, AUTHOR)])
    await driver.run([delete(TID, author=OTHER)])
    assert early_deletes.data[edge_key(OTHER, TID)] == b"9000"

    await driver.run([tweet(TID)])

    assert "deleted_at" not in cassandra_row(sinks)
    assert adds(sent, TID) == Counter({11: 1})
    assert TID in sinks.cassandra.author_tl[AUTHOR]
    assert redis_writes(sinks)[1] == []
    # the other author's later post of the id is a conflict, so their early delete never applies
    await driver.run([tweet(TID, author=OTHER)])
    assert "already taken" in sent.dead_letters()[-1]["reason"]
    assert "deleted_at" not in cassandra_row(sinks)


async def test_delete_then_post_in_one_batch_is_not_pushed(driver: AgentDriver, sinks: Any, sent: SentLog) -> None:
    await driver.run([follow(11, AUTHOR)])
    await driver.run([delete(TID), tweet(TID)])
    assert cassandra_row(sinks)["deleted_at"] == 9_000
    assert adds(sent, TID) == Counter()
    assert TID not in sinks.cassandra.author_tl.get(AUTHOR, set())
    assert early_deletes.data == {}


async def test_a_placeholder_left_by_an_older_worker_is_claimed_and_keeps_its_mark(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    await driver.run([follow(11, AUTHOR)])
    sinks.cassandra.tweets[TID] = {"deleted_at": 3_000}  # the old mark_deleted upsert
    await driver.run([tweet(TID)])
    assert cassandra_row(sinks) == {"deleted_at": 3_000, "author_id": AUTHOR, "text": "original", "created_at": 5_000}
    assert adds(sent, TID) == Counter() and sent.dead_letters() == []


async def test_a_post_that_lost_its_claim_in_postgresql_is_dead_lettered_before_any_body(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    """The other author's post of the id was claimed first (by another worker, or by the
    projection's insert) and its body is not in Cassandra yet: PostgreSQL's row decides."""
    await driver.run([follow(11, AUTHOR)])
    await sinks.claims.claim([(TID, OTHER, "theirs", 4_000)])
    await driver.run([tweet(TID)])
    assert TID not in sinks.cassandra.tweets, "no body for the loser"
    assert adds(sent, TID) == Counter() and redis_writes(sinks) == ([], [])
    [letter] = sent.dead_letters()
    assert f"already taken by an earlier tweet_posted (author_id {OTHER})" in letter["reason"]
    # the winner's own post, on its own partition, goes on and stores its body
    await driver.run([follow(21, OTHER)])
    await driver.run([tweet(TID, author=OTHER, text="theirs", created_at=4_000)])
    assert cassandra_row(sinks) == {"author_id": OTHER, "text": "theirs", "created_at": 4_000}
    assert adds(sent, TID) == Counter({21: 1})
