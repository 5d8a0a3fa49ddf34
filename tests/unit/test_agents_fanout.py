"""Stage 1 (``agents.fanout``) through Faust's agent test machinery: no Kafka, no stores.

Each batch is put into ``fanout.test_context()`` (in-memory tables) and processed
as one ``take_events`` batch; the stores are the doubles of ``agent_doubles`` and
what the Outbox publishes is recorded at ``Topic.send``.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import agents.fanout as fanout_mod
from faust_app import app, settings
from policies.celebrity import CelebrityRule
from policies.first_wins import StoredTweet
from policies.partitioning import partition_for_id
from policies.stream import Item, Notice, decode_notice, notice_items
from schemas import TweetDeleted, TweetPosted, UserFollowed, UserUnfollowed
from schemas.tweet_json import render_tail
from tables.edges import entity_key
from tables.graph import authors, follower_edges
from tests.unit.agent_doubles import (
    AgentDriver,
    Journal,
    Msg,
    SentLog,
    SimulatedCrash,
    first,
    id_on_other_partition,
    last,
    msg_for,
)

TWEETS, FOLLOWS = settings.topic_tweets, settings.topic_follows
P = settings.topic_partitions
AUTHOR = 7


def part(user_id: int) -> int:
    return partition_for_id(user_id, P)


def follow(follower: int, followee: int = AUTHOR, at: int = 1_000) -> Msg:
    return msg_for(FOLLOWS, followee, UserFollowed(follower, followee, at))


def unfollow(follower: int, followee: int = AUTHOR, at: int = 2_000) -> Msg:
    return msg_for(FOLLOWS, followee, UserUnfollowed(follower, followee, at))


def tweet(tweet_id: int, author: int = AUTHOR, created_at: int = 5_000, text: str = "hello") -> Msg:
    return msg_for(TWEETS, author, TweetPosted(tweet_id, author, text, created_at))


def delete(tweet_id: int, author: int = AUTHOR, deleted_at: int = 9_000) -> Msg:
    return msg_for(TWEETS, author, TweetDeleted(tweet_id, author, deleted_at))


def author_row(author_id: int = AUTHOR) -> dict | None:
    return authors.data.get(entity_key(author_id))


def recipients_of(sent: SentLog, kind: str, tweet_id: int) -> Counter:
    """How many times each user got op ``kind`` for ``tweet_id``; checks each op's partition."""
    got: Counter = Counter()
    for partition, op in sent.delivery_ops(kind):
        if op.get("tweet_id") != tweet_id:
            continue
        assert op["to"] == sorted(op["to"]), "recipients are sorted within a message"
        for user in op["to"]:
            assert part(user) == partition, f"user {user} delivered on partition {partition}, owns {part(user)}"
            got[user] += 1
    return got


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> AgentDriver:
    return AgentDriver(fanout_mod.fanout, fanout_mod, "process_author_batch", monkeypatch)


@pytest.fixture(autouse=True)
def design_rule(monkeypatch: pytest.MonkeyPatch) -> CelebrityRule:
    """The design's numbers, whatever TL_CELEBRITY_* says in the environment."""
    rule = CelebrityRule(threshold=10_000, hysteresis=1_000)
    monkeypatch.setattr(fanout_mod, "RULE", rule)
    return rule


@pytest.fixture
def low_threshold(design_rule: CelebrityRule, monkeypatch: pytest.MonkeyPatch) -> CelebrityRule:
    """Celebrity at >= 3 followers, back to normal only below 2 (hysteresis 1)."""
    rule = CelebrityRule(threshold=3, hysteresis=1)
    monkeypatch.setattr(fanout_mod, "RULE", rule)
    return rule


# --- plain fanout -------------------------------------------------------------------------


async def test_tweet_is_delivered_to_exactly_the_followers_grouped_by_partition(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    followers = list(range(1000, 1100))  # 100 users over 64 partitions: several share one
    gone = [1003, 1050]
    await driver.run([follow(f) for f in followers] + [follow(AUTHOR + 1, followee=AUTHOR + 2)])
    await driver.run([unfollow(f) for f in gone])
    sent.clear()

    await driver.run([tweet(500, created_at=1234)])

    expected = set(followers) - set(gone)
    got = recipients_of(sent, "add", 500)
    assert set(got) == expected and set(got.values()) == {1}, "every follower exactly once, nobody else"
    messages = sent.delivery_messages()
    partitions = [p for p, _ in messages]
    assert partitions == sorted(set(partitions)), "one message per destination partition, in order"
    assert set(partitions) == {part(f) for f in expected}
    assert len(partitions) < len(expected), "followers sharing a partition share a message"
    for _, ops in messages:
        for op in ops:
            assert op == {"op": "add", "tweet_id": 500, "author_id": AUTHOR, "created_at": 1234, "to": op["to"]}
    # the tweet itself is stored (Cassandra and the Redis tweet cache) before the deliveries go out
    assert sinks.claims.winners[500] == StoredTweet(500, AUTHOR, "hello", 1234), "claimed in PostgreSQL"
    assert ("insert_tweet", (500, AUTHOR, "hello", 1234)) in sinks.cassandra.writes()
    assert ("insert_author_tl", (AUTHOR, 500)) in sinks.cassandra.writes()
    assert sinks.tweets.writes[-1] == ([(500, AUTHOR, "hello", 1234)], [])
    assert author_row()["last_pushed"] == 500
    assert sent.dead_letters() == []


async def test_follow_and_unfollow_are_idempotent(driver: AgentDriver, sinks: Any, sent: SentLog) -> None:
    # duplicates inside one batch and across batches
    await driver.run([follow(11), follow(11), follow(12)])
    await driver.run([follow(11)])
    assert author_row()["followers"] == 2
    assert sorted(k for k in follower_edges.data.keys()) == [b"7:11", b"7:12"]
    assert sinks.cassandra.writes_named("set_author_status")[-1] == ("set_author_status", (AUTHOR, 2, False, 0))
    # the follower side is the delivery stage's (idempotent) job: every event is forwarded
    follows = [(p, op) for p, op in sent.delivery_ops("follow")]
    assert [op["follower"] for _, op in follows] == [11, 11, 12, 11]
    assert all(p == part(op["follower"]) for p, op in follows)

    sent.clear()
    await driver.run([tweet(600)])
    assert recipients_of(sent, "add", 600) == Counter({11: 1, 12: 1})

    await driver.run([unfollow(11), unfollow(11)])
    await driver.run([unfollow(11), unfollow(99)])  # 99 never followed: no negative count
    assert author_row()["followers"] == 1
    assert sorted(follower_edges.data.keys()) == [b"7:12"]
    assert sinks.cassandra.writes_named("set_author_status")[-1] == ("set_author_status", (AUTHOR, 1, False, 0))
    assert [op["follower"] for _, op in sent.delivery_ops("unfollow")] == [11, 11, 11, 99]


async def test_each_tweet_goes_to_the_followers_of_its_moment_though_they_are_kept_between_tweets(
    driver: AgentDriver, sinks: Any, sent: SentLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An author's followers are kept grouped between tweets (``tables/follower_plans.py``):
    every follow and unfollow of the author changes what the next tweet gets, in one batch too,
    and a tweet of an author whose edges did not change reads no edge."""
    scans: list[int] = []
    real = fanout_mod.AuthorBatch.followers

    def counted(author_id: int) -> list[int]:
        scans.append(author_id)
        return real(author_id)

    monkeypatch.setattr(fanout_mod.AuthorBatch, "followers", staticmethod(counted))
    await driver.run([follow(21), follow(22)])
    await driver.run([tweet(701)])
    await driver.run([follow(23), tweet(702), unfollow(21), tweet(703)])
    scans.clear()
    await driver.run([tweet(704), follow(22)])  # a repeated follow changes no edge
    await driver.run([tweet(705)])
    assert scans == [], "the kept groups were used"
    await app.on_partitions_assigned.send(set())  # partitions moved: nothing kept any more
    assert fanout_mod.PLANS.plans == {}
    await driver.run([unfollow(22), follow(21), tweet(706)])

    expected = {701: {21, 22}, 702: {21, 22, 23}, 703: {22, 23}, 704: {22, 23}, 705: {22, 23}, 706: {21, 23}}
    for tweet_id, users in expected.items():
        assert recipients_of(sent, "add", tweet_id) == Counter(dict.fromkeys(users, 1)), tweet_id
    sent.clear()
    await driver.run([delete(706)])
    assert recipients_of(sent, "remove", 706) == Counter({21: 1, 23: 1})


async def test_tweets_are_stored_before_the_deliveries_are_published(
    driver: AgentDriver, sinks: Any, sent: SentLog, journal: Journal
) -> None:
    """Stage 2 backfills from the author timeline: it must hold every tweet fanned out."""
    await driver.run([follow(13), tweet(650), delete(649)])
    published = first(journal, "kafka", settings.topic_deliveries)
    assert published > 0
    assert last(journal, "postgres", "claim") < published
    assert last(journal, "cassandra", "insert_tweet", "get_tweets", "insert_author_tl", "mark_deleted", "delete_author_tl") < published
    assert last(journal, "cassandra", "insert_tweet") < first(journal, "cassandra", "insert_author_tl"), "bodies first"
    assert last(journal, "tweets", "write") < published
    assert last(journal, "cassandra", "set_author_status") < published


async def test_author_windows_follow_the_author_timeline_after_cassandra(
    driver: AgentDriver, sinks: Any, sent: SentLog, journal: Journal
) -> None:
    """The cached author windows (celebrity pulls read them) gain what the author timeline
    gains and lose its deletes, only after Cassandra has both, additions before removals."""
    await driver.run([follow(14), tweet(660), tweet(661), delete(660), delete(5)])
    windows = sinks.author_windows
    assert windows.pushed() == {AUTHOR: {(660, AUTHOR), (661, AUTHOR)}}
    assert windows.unpushed() == {AUTHOR: {(660, AUTHOR)}}, "a delete before its tweet removes nothing yet"
    cassandra_done = last(journal, "cassandra", "insert_author_tl", "delete_author_tl")
    assert cassandra_done < first(journal, "author_windows", "push_many")
    assert last(journal, "author_windows", "push_many") < first(journal, "author_windows", "unpush_many")


# --- celebrities --------------------------------------------------------------------------


async def test_celebrity_tweet_is_not_pushed(
    driver: AgentDriver, sinks: Any, sent: SentLog, low_threshold: CelebrityRule
) -> None:
    await driver.run([follow(21), tweet(100), follow(22), follow(23)])  # 3rd follower: promoted
    status = author_row()
    assert status["celebrity"] is True and status["followers"] == 3
    assert status["since"] == 100, "pulled from the first tweet after the last pushed one"
    assert sinks.cassandra.author_status[AUTHOR] == (3, True, 100)
    assert sinks.celebrities.members == {AUTHOR} == sinks.cassandra.celebrities
    assert recipients_of(sent, "add", 100) == Counter({21: 1}), "pushed while not a celebrity"
    sent.clear()

    await driver.run([tweet(101)])

    assert sent.delivery_ops("add") == []
    assert ("insert_author_tl", (AUTHOR, 101)) in sinks.cassandra.writes(), "still stored, for pulls"
    assert author_row()["last_pushed"] == 100


async def test_a_celebrity_notice_carries_its_pulled_tweets_items(
    driver: AgentDriver, sinks: Any, sent: SentLog, low_threshold: CelebrityRule
) -> None:
    """Open streams of a celebrity's followers get the pulled tweet's page item (the same bytes
    the body cache renders), so they can send it without a read; a delete only says so."""
    await driver.run([follow(21), tweet(100), follow(22), follow(23)])  # promoted
    sinks.redis.published.clear()
    await driver.run([tweet(101, text="pulled \u00e9")])
    await driver.run([delete(101)])
    channel = sinks.live.author(AUTHOR)
    notices = [decode_notice(m)._replace(sent_at=0.0) for c, m in sinks.redis.published if c == channel]
    assert notices == [
        Notice(added=((101, AUTHOR),), items=((101, AUTHOR, render_tail("pulled \u00e9", 5_000)),), pulled=True),
        Notice(deleted=((101, AUTHOR),), pulled=True),
    ]
    assert notice_items(notices[0]) == [Item(101, AUTHOR, render_tail("pulled \u00e9", 5_000), True)]


async def test_promotion_and_demotion_use_hysteresis_and_demotion_queues_a_backfill(
    driver: AgentDriver, sinks: Any, sent: SentLog, low_threshold: CelebrityRule
) -> None:
    f1, f2, f3 = 31, 32, 33
    await driver.run([follow(f1), follow(f2), tweet(200)])
    assert author_row()["celebrity"] is False
    await driver.run([follow(f3)])  # 3 >= threshold
    assert author_row()["celebrity"] is True and author_row()["since"] == 200
    await driver.run([tweet(201), tweet(202)])  # not pushed
    sent.clear()

    await driver.run([unfollow(f3)])  # 2: inside the hysteresis band, stays a celebrity
    assert author_row()["celebrity"] is True
    assert sent.delivery_ops("backfill") == []
    assert sinks.celebrities.members == {AUTHOR} == sinks.cassandra.celebrities
    sent.clear()

    await driver.run([unfollow(f2)])  # 1 < threshold - hysteresis: demoted
    status = author_row()
    assert status["celebrity"] is False and status["followers"] == 1
    assert status["backfill_pending"] is False, "cleared once the backfill was published"
    backfills = sent.delivery_ops("backfill")
    assert backfills == [(part(f1), {"op": "backfill", "author": AUTHOR, "above": 200, "to": [f1]})]
    assert sinks.celebrities.members == set() == sinks.cassandra.celebrities
    assert sinks.cassandra.author_status[AUTHOR] == (1, False, 200)
    # the unfollow reaches the follower's partition in the same publish
    assert [op["follower"] for _, op in sent.delivery_ops("unfollow")] == [f2]
    sent.clear()

    await driver.run([tweet(203)])  # pushed again
    assert recipients_of(sent, "add", 203) == Counter({f1: 1})


async def test_backfill_is_queued_once_per_batch_and_per_partition(
    driver: AgentDriver, sinks: Any, sent: SentLog, low_threshold: CelebrityRule
) -> None:
    followers = [41, 42, 43, 44]
    await driver.run([follow(f) for f in followers])
    assert author_row()["celebrity"] is True
    sent.clear()
    # 4 -> 1 in one batch: demoted at the 3rd unfollow; the later follow (2 followers,
    # no transition) must not queue the still-pending backfill a second time
    await driver.run([unfollow(44), unfollow(43), unfollow(42), follow(45)])
    backfills = sent.delivery_ops("backfill")
    assert sorted(u for _, op in backfills for u in op["to"]) == [41]
    assert author_row()["backfill_pending"] is False and author_row()["celebrity"] is False
    assert all(p == part(u) for p, op in backfills for u in op["to"])


async def test_replay_after_a_crash_pushes_a_tweet_planned_before_the_promotion(
    driver: AgentDriver, sinks: Any, sent: SentLog, low_threshold: CelebrityRule
) -> None:
    """At-least-once: the tables may already hold a batch's changes when the batch is replayed
    (RocksDB is written at once, the changelog is produced before the offsets are committed)."""
    f1, f2, f3 = 101, 102, 103
    await driver.run([follow(f1), follow(f2)])
    batch = [tweet(1000), follow(f3)]  # the tweet is planned, then the follow promotes the author
    sent.clear()
    sent.crash_on_next_send_to = settings.topic_deliveries
    with pytest.raises(SimulatedCrash):
        await driver.run(batch)
    assert sent.delivery_ops() == [], "nothing was published"
    assert author_row()["celebrity"] is True and author_row()["since"] == 1000, "but the table moved on"

    await driver.run(batch)  # Kafka redelivers the unacknowledged batch

    got = recipients_of(sent, "add", 1000)
    assert got[f1] == 1 and got[f2] == 1, "pushed before the promotion, so pushed on replay"
    # and nothing is lost later: a demotion backfills only tweets above `since`
    sent.clear()
    await driver.run([unfollow(f3), unfollow(f2), tweet(1001)])
    assert sent.delivery_ops("backfill") == [(part(f1), {"op": "backfill", "author": AUTHOR, "above": 1000, "to": [f1]})]


# --- deletes ------------------------------------------------------------------------------


async def test_delete_sends_remove_ops_to_the_followers(driver: AgentDriver, sinks: Any, sent: SentLog) -> None:
    followers = [51, 52, 53, 54, 55]
    await driver.run([follow(f) for f in followers] + [tweet(300)])
    sent.clear()

    await driver.run([delete(300, deleted_at=0)])

    assert recipients_of(sent, "remove", 300) == Counter({f: 1 for f in followers})
    for _, op in sent.delivery_ops("remove"):
        assert op["author_id"] == AUTHOR and op["created_at"] == 0
    writes = sinks.cassandra.writes()
    assert ("mark_deleted", (1, 300)) in writes, "deleted_at 0 is stored as 1 (0 would mean 'not deleted')"
    assert ("delete_author_tl", (AUTHOR, 300)) in writes
    assert sinks.tweets.writes[-1] == ([], [(300, 1)])
    assert 300 not in sinks.cassandra.author_tl[AUTHOR]


async def test_a_celebrity_delete_is_only_sent_for_tweets_that_were_pushed(
    driver: AgentDriver, sinks: Any, sent: SentLog, low_threshold: CelebrityRule
) -> None:
    await driver.run([follow(61), tweet(400), follow(62), follow(63), tweet(401)])
    assert author_row()["since"] == 400
    sent.clear()

    await driver.run([delete(401), delete(400)])

    assert recipients_of(sent, "remove", 401) == Counter(), "never pushed: nothing to remove"
    assert recipients_of(sent, "remove", 400) == Counter({61: 1, 62: 1, 63: 1})


async def test_post_and_delete_in_one_batch_store_the_delete_last(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    await driver.run([follow(71), tweet(700), delete(700)])
    names = [name for name, _ in sinks.cassandra.writes()
             if name not in ("set_author_status", "insert_celebrity", "delete_celebrity")]
    assert names == ["insert_tweet", "insert_author_tl", "mark_deleted", "delete_author_tl"]
    assert AUTHOR not in sinks.cassandra.author_tl or 700 not in sinks.cassandra.author_tl[AUTHOR]
    ops = [op["op"] for _, op in sent.delivery_ops() if op.get("tweet_id") == 700]
    assert ops == ["add", "remove"], "the add and its removal stay in order on the follower's partition"


# --- bad input ----------------------------------------------------------------------------


async def test_malformed_messages_are_dead_lettered_and_the_batch_goes_on(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    p = part(AUTHOR)
    bad = [
        Msg(TWEETS, b"7", b"{not json", p),
        msg_for(TWEETS, AUTHOR, {"type": "tweet_posted", "tweet_id": "1", "author_id": AUTHOR,
                                 "text": "x", "created_at": 1}),
        msg_for(FOLLOWS, AUTHOR, {"type": "followed", "follower_id": AUTHOR, "followee_id": AUTHOR, "at": 1}),
        msg_for(FOLLOWS, AUTHOR, {"type": "tweet_posted", "tweet_id": 2, "author_id": AUTHOR,
                                  "text": "x", "created_at": 1}),
        Msg(TWEETS, b"7", None, p),
    ]
    good = [follow(81), tweet(800)]

    await driver.run(bad[:3] + [good[0]] + bad[3:] + [good[1]])

    letters = sent.dead_letters()
    assert [d["reason"].split(":")[0] for d in letters] == [
        "value is not valid UTF-8 JSON",
        "field 'tweet_id' must be an integer, got string",
        f"followed event has follower_id == followee_id ({AUTHOR})",
        "event type 'tweet_posted' is not one of ['followed', 'unfollowed'] on this topic",
        "message has no value (tombstone)",
    ]
    for d, m, offset in zip(letters, bad, [0, 1, 2, 4, 5]):
        assert d["stage"] == "fanout"
        assert (d["topic"], d["partition"], d["offset"]) == (m.topic, m.partition, offset)
        assert d["key"] == "7"
        assert d["value_head"] == (m.value.decode() if m.value is not None else None)
        assert d["value_len"] == (len(m.value) if m.value is not None else None)
        assert d["value_truncated"] is False
    assert all(s.partition is None and s.force for s in sent.on(settings.topic_dead_letters))
    # the good events of the same batch were processed
    assert recipients_of(sent, "add", 800) == Counter({81: 1})
    assert author_row()["followers"] == 1
    assert [name for name, _ in sinks.cassandra.writes() if name.startswith("insert")] == [
        "insert_tweet", "insert_author_tl",
    ]


async def test_message_on_the_wrong_partition_is_rerouted_not_processed(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    right = part(AUTHOR)
    wrong = (right + 1) % P
    misrouted_follow = Msg(FOLLOWS, b"7", follow(91).value, wrong)
    misrouted_tweet = Msg(TWEETS, b"7", tweet(900).value, wrong)
    other = id_on_other_partition(wrong, start=AUTHOR + 1)

    await driver.run([misrouted_follow, misrouted_tweet, follow(92, followee=other)])

    rerouted = [s for s in sent.sent if s.topic in (FOLLOWS, TWEETS)]
    assert [(s.topic, s.key, s.value, s.partition, s.force) for s in rerouted] == [
        (FOLLOWS, b"7", misrouted_follow.value, right, True),
        (TWEETS, b"7", misrouted_tweet.value, right, True),
    ]
    assert author_row() is None, "no table change for the misrouted follow"
    assert b"7:91" not in follower_edges.data
    assert not [w for w in sinks.cassandra.writes() if w[0] in ("insert_tweet", "insert_author_tl")]
    assert sinks.claims.calls == []
    assert sinks.tweets.writes == []
    assert sent.dead_letters() == []
    # a correctly routed event of the same batch is processed
    assert [op["follower"] for _, op in sent.delivery_ops("follow")] == [92]
    assert author_row(other)["followers"] == 1

    sent.clear()
    await driver.run([Msg(FOLLOWS, b"7", misrouted_follow.value, right)])  # as re-delivered
    assert author_row()["followers"] == 1
    assert [op["follower"] for _, op in sent.delivery_ops("follow")] == [91]


async def test_a_worker_that_may_not_write_source_topics_dead_letters_a_misplaced_event(
    driver: AgentDriver, sinks: Any, sent: SentLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout_mod, "settings", fanout_mod.settings.replace(misplaced_events="dead-letter"))
    right = part(AUTHOR)
    wrong = (right + 1) % P
    await driver.run([Msg(TWEETS, b"7", tweet(901).value, wrong), follow(93)])
    assert [s for s in sent.sent if s.topic in (FOLLOWS, TWEETS)] == []  # nothing re-sent
    [letter] = sent.dead_letters()
    assert letter["reason"].startswith(f"misplaced: on partition {wrong}, its key belongs on partition {right}")
    assert not [w for w in sinks.cassandra.writes() if w[0] in ("insert_tweet", "insert_author_tl")]
    assert sinks.claims.calls == []
    assert [op["follower"] for _, op in sent.delivery_ops("follow")] == [93]  # the rest goes on


async def test_a_drifted_follower_count_is_corrected_before_a_transition(
    driver: AgentDriver, sinks: Any, sent: SentLog, low_threshold: CelebrityRule
) -> None:
    """After a crash the count can disagree with the edges (two changelog topics): a
    transition is decided on the exact number of edges, and the count repaired."""
    await driver.run([follow(21)])
    # As if a replay had lost one follow's edge but kept its count: 2 counted, 1 edge.
    authors.data[entity_key(AUTHOR)] = {**author_row(), "followers": 2}
    await driver.run([follow(22)])  # count says 3 (promotion); the edges say 2
    assert author_row()["celebrity"] is False and author_row()["followers"] == 2
    await driver.run([follow(23), tweet(100)])  # now really 3
    assert author_row()["celebrity"] is True and author_row()["followers"] == 3
    assert recipients_of(sent, "add", 100) == Counter(), "a celebrity's tweet is pulled, not pushed"


async def test_celebrity_tweets_deletes_and_transitions_are_published_for_open_streams(
    driver: AgentDriver, sinks: Any, sent: SentLog, low_threshold: CelebrityRule
) -> None:
    prefix = settings.redis_prefix
    await driver.run([follow(81), tweet(800), follow(82), follow(83)])  # promoted
    got = [(c, decode_notice(raw)._replace(sent_at=0.0)) for c, raw in sinks.redis.published]
    assert got == [(f"{prefix}live:celebrities", Notice(celebrities=((AUTHOR, True),)))], "pushed: stage 2 tells"
    sinks.redis.published.clear()

    await driver.run([tweet(801), tweet(802), delete(801), delete(800)])

    got = [(c, decode_notice(raw)._replace(sent_at=0.0)) for c, raw in sinks.redis.published]
    tail = render_tail("hello", 5_000)
    assert got == [(f"{prefix}live:a:{AUTHOR}", Notice(added=((801, AUTHOR), (802, AUTHOR)),
                                                       deleted=((801, AUTHOR),),
                                                       items=((801, AUTHOR, tail), (802, AUTHOR, tail)),
                                                       pulled=True))], "800 was pushed"
