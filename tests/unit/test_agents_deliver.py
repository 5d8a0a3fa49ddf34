"""Stage 2 (``agents.deliver``) through Faust's agent test machinery: no Kafka, no stores.

Delivery messages are written here as stage 1 publishes them (``{"ops": [...]}``
keyed by the destination partition); activity events as the Post service does.
The fake Cassandra answers author-timeline reads from what the test seeds.
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

import agents.deliver as deliver_mod
import agents.sinks as agent_sinks
from faust_app import app, settings
from policies.partitioning import partition_for_id
from schemas import UserActive, encode_key
from tables.edges import entity_key
from tables.graph import following_edges, recipients
from tests.unit.agent_doubles import (AgentDriver, Journal, Msg, SentLog, SimulatedCrash, first, last, make_sinks,
                                     msg_for, reset_tables)

ACTIVITY, DELIVERIES = settings.topic_activity, settings.topic_deliveries
P = settings.topic_partitions
DAY = 24 * 3600 * 1000
T0 = 1_700_000_000_000  # event time of the scenarios (epoch ms)
A, B = 501, 502  # authors


def part(user_id: int) -> int:
    return partition_for_id(user_id, P)


def ops_msg(*ops: dict, partition: int | None = None) -> Msg:
    """One delivery message as stage 1 publishes it: all recipients on one partition."""
    if partition is None:
        users = {u for op in ops for u in (op.get("to") or [op.get("follower")])}
        partitions = {part(u) for u in users}
        assert len(partitions) == 1, "test messages address one partition"
        partition = partitions.pop()
    return Msg(DELIVERIES, encode_key(partition), orjson.dumps({"ops": list(ops)}), partition)


def add(tweet_id: int, to: list[int], author: int = A, created_at: int = T0) -> dict:
    return {"op": "add", "tweet_id": tweet_id, "author_id": author, "created_at": created_at, "to": to}


def remove(tweet_id: int, to: list[int], author: int = A) -> dict:
    return {"op": "remove", "tweet_id": tweet_id, "author_id": author, "created_at": 0, "to": to}


def follow(user: int, followee: int = A, at: int = T0) -> dict:
    return {"op": "follow", "follower": user, "followee": followee, "at": at}


def unfollow(user: int, followee: int = A, at: int = T0) -> dict:
    return {"op": "unfollow", "follower": user, "followee": followee, "at": at}


def active(user: int, at: int) -> Msg:
    return msg_for(ACTIVITY, user, UserActive(user, at))


def users_on_one_partition(n: int, start: int = 1000) -> list[int]:
    """``n`` user ids whose timelines live on the same partition."""
    target = part(start)
    out, i = [], start
    while len(out) < n:
        if part(i) == target:
            out.append(i)
        i += 1
    return out


def rec(user: int) -> dict | None:
    return recipients.data.get(entity_key(user))


def timeline_writes(sinks: Any) -> list[tuple[str, tuple]]:
    return sinks.cassandra.writes_named("insert_user_tl", "delete_user_tl")


def meta_writes(sinks: Any) -> list[tuple[int, int, bool]]:
    """set_meta writes without the wall-clock ``rebuilt_at``."""
    return [p[:3] for _, p in sinks.cassandra.writes_named("set_meta")]


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> AgentDriver:
    return AgentDriver(deliver_mod.deliver, deliver_mod, "process_recipient_batch", monkeypatch,
                       begin_fn="begin_recipient_batch")


@pytest.fixture(autouse=True)
def design_numbers(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The design's numbers (30 days, 800 entries), whatever TL_* says in the environment."""
    design = settings.replace(inactive_after_ms=30 * DAY, timeline_cap=800, backfill_limit=800)
    monkeypatch.setattr(deliver_mod, "settings", design)
    return design


@pytest.fixture
def small_limits(design_numbers: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A 3-entry timeline cap and backfill limit, so floors move with a few tweets."""
    small = design_numbers.replace(timeline_cap=3, backfill_limit=3)
    monkeypatch.setattr(deliver_mod, "settings", small)
    return small


# --- add ----------------------------------------------------------------------------------


async def test_add_writes_active_recipients_and_marks_inactive_ones_stale(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    never, recent, boundary, idle = users_on_one_partition(4)
    limit = 30 * DAY
    await driver.run([active(recent, T0 - 10 * DAY), active(boundary, T0 - limit), active(idle, T0 - limit - 1)])
    assert timeline_writes(sinks) == [] and meta_writes(sinks) == []

    await driver.run([ops_msg(add(10, [never, recent, boundary, idle]))])

    assert timeline_writes(sinks) == [
        ("insert_user_tl", (never, 10, A)),
        ("insert_user_tl", (recent, 10, A)),
        ("insert_user_tl", (boundary, 10, A)),
    ], "no activity record = active; exactly 30 days of silence = active (event time)"
    assert meta_writes(sinks) == [(idle, 0, True)]
    assert rec(idle)["stale"] is True and rec(recent)["stale"] is False
    assert sinks.timelines.invalidated() == {idle}
    assert sinks.timelines.pushed() == {never: {(10, A)}, recent: {(10, A)}, boundary: {(10, A)}}

    # a stale timeline takes no more deliveries, even of tweets from its active days
    await driver.run([ops_msg(add(11, [idle], created_at=T0 - 20 * DAY))])
    assert (("insert_user_tl", (idle, 11, A))) not in timeline_writes(sinks)
    assert meta_writes(sinks) == [(idle, 0, True)], "marked stale once"
    assert sent.dead_letters() == []


async def test_add_skips_tweets_at_or_below_the_floor(
    driver: AgentDriver, sinks: Any, small_limits: Any
) -> None:
    user = 1001
    sinks.cassandra.seed_author_timeline(B, [1, 2, 3, 4, 5])
    await driver.run([ops_msg(follow(user, B))])  # 5 tweets > limit 3: floor = 2
    assert rec(user)["floor"] == 2

    await driver.run([ops_msg(add(2, [user]), add(6, [user]))])
    assert timeline_writes(sinks)[-1] == ("insert_user_tl", (user, 6, A))
    assert ("insert_user_tl", (user, 2, A)) not in timeline_writes(sinks)


# --- activity and rebuilds ----------------------------------------------------------------


async def test_user_active_for_a_stale_user_rebuilds_from_author_timelines(
    driver: AgentDriver, sinks: Any, small_limits: Any
) -> None:
    user = 1002
    await driver.run([active(user, T0)])
    await driver.run([ops_msg(follow(user, A, at=T0), follow(user, B, at=T0))])  # nothing to backfill yet
    sinks.cassandra.seed_author_timeline(A, [10, 30, 50])  # stage 1 stores them before delivering
    sinks.cassandra.seed_author_timeline(B, [20, 40])
    await driver.run([ops_msg(add(50, [user], created_at=T0 + 31 * DAY))])  # inactive: skipped
    assert rec(user)["stale"] is True
    assert timeline_writes(sinks) == []
    before = len(sinks.cassandra.calls)

    await driver.run([active(user, T0 + 32 * DAY)])

    calls = sinks.cassandra.calls[before:]
    reads = sorted(p for m, n, p in calls if m == "query_many")
    assert reads == [(A, 2**63 - 1, 4), (B, 2**63 - 1, 4)], "each followee's newest cap+1 tweets"
    clear = calls.index(("execute_many", "clear_user_tl", (user,)))
    assert all(i > clear for i, c in enumerate(calls) if c[:2] == ("execute_many", "insert_user_tl")), \
        "the old rows are cleared before the rebuilt ones are written (in the user's chunk)"
    # newest 3 of {50, 40, 30, 20, 10}; the floor is raised below the oldest kept one
    assert sorted(timeline_writes(sinks)) == [
        ("insert_user_tl", (user, 30, A)),
        ("insert_user_tl", (user, 40, B)),
        ("insert_user_tl", (user, 50, A)),
    ]
    assert meta_writes(sinks)[-1] == (user, 29, False)
    assert rec(user) == {"active_at": T0 + 32 * DAY, "stale": False, "floor": 29}
    assert sinks.cassandra.user_tl[user] == {30: A, 40: B, 50: A}
    assert user in sinks.timelines.invalidated(), "the cached timeline is dropped, not patched"
    assert user not in sinks.timelines.pushed()

    # deliveries are accepted again
    await driver.run([ops_msg(add(60, [user], created_at=T0 + 33 * DAY))])
    assert timeline_writes(sinks)[-1] == ("insert_user_tl", (user, 60, A))


async def test_a_user_returning_mid_batch_gets_the_skipped_tweets_back(
    driver: AgentDriver, sinks: Any, small_limits: Any
) -> None:
    user = 1003
    await driver.run([active(user, T0), ops_msg(follow(user, A, at=T0))])
    sinks.cassandra.seed_author_timeline(A, [70])
    await driver.run([ops_msg(add(70, [user], created_at=T0 + 40 * DAY))])
    assert rec(user)["stale"] is True
    sinks.cassandra.seed_author_timeline(A, [71])

    # the add (skipped: stale), then the user comes back, then a later add
    await driver.run([
        ops_msg(add(71, [user], created_at=T0 + 41 * DAY)),
        active(user, T0 + 41 * DAY),
        ops_msg(add(72, [user], created_at=T0 + 41 * DAY)),
    ])
    assert sorted(timeline_writes(sinks)) == [
        ("insert_user_tl", (user, 70, A)),
        ("insert_user_tl", (user, 71, A)),
        ("insert_user_tl", (user, 72, A)),
    ]


def count_table_reads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The keys the ``recipients`` table is read for from now on; nothing cached before."""
    reads: list[bytes] = []
    real_get = recipients.get

    def counting_get(key: bytes, default: Any = None) -> Any:
        reads.append(key)
        return real_get(key, default)

    monkeypatch.setattr(recipients, "get", counting_get)
    deliver_mod.RECIPIENTS.clear()  # as a fresh worker
    return reads


async def test_a_batch_reads_each_recipient_once_and_sees_its_own_changes(
    driver: AgentDriver, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    u1, u2 = users_on_one_partition(2, start=1500)
    await driver.run([active(u1, T0), active(u2, T0)])
    reads = count_table_reads(monkeypatch)
    # u2 goes stale at the second add (31 days idle), so the third add skips u2 only
    await driver.run([
        ops_msg(add(80, [u1, u2], created_at=T0 + DAY)),
        active(u1, T0 + 30 * DAY),
        ops_msg(add(81, [u1, u2], created_at=T0 + 31 * DAY)),
        ops_msg(add(82, [u1, u2], created_at=T0 + 2 * DAY)),
    ])
    assert timeline_writes(sinks) == [
        ("insert_user_tl", (u1, 80, A)),
        ("insert_user_tl", (u2, 80, A)),
        ("insert_user_tl", (u1, 81, A)),
        ("insert_user_tl", (u1, 82, A)),
    ]
    assert rec(u1) == {"active_at": T0 + 30 * DAY, "stale": False, "floor": 0}
    assert rec(u2) == {"active_at": T0, "stale": True, "floor": 0}
    assert meta_writes(sinks) == [(u2, 0, True)]
    # one read each while the ops ran; clearing u2's flag after the writes reads the cached row
    assert reads == [entity_key(u1), entity_key(u2)]


async def test_recipient_rows_are_read_once_and_again_after_partitions_move(
    driver: AgentDriver, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    u1, u2 = users_on_one_partition(2, start=1600)
    await driver.run([active(u1, T0), active(u2, T0)])
    reads = count_table_reads(monkeypatch)
    await driver.run([ops_msg(add(90, [u1, u2], created_at=T0 + DAY))])
    await driver.run([ops_msg(add(91, [u1, u2], created_at=T0 + DAY))])
    assert reads == [entity_key(u1), entity_key(u2)]  # once, for both batches
    # Partitions moved: another worker may have changed these rows; read them again.
    await app.on_partitions_revoked.send(set())
    recipients.data[entity_key(u2)] = {"active_at": T0, "stale": True, "floor": 0}  # as a changelog replay would
    await driver.run([ops_msg(add(92, [u1, u2], created_at=T0 + DAY))])
    assert reads == [entity_key(u1), entity_key(u2)] * 2
    assert ("insert_user_tl", (u2, 92, A)) not in timeline_writes(sinks)  # the replayed row counts
    assert ("insert_user_tl", (u1, 92, A)) in timeline_writes(sinks)


async def test_activity_of_an_active_user_only_moves_active_at(driver: AgentDriver, sinks: Any) -> None:
    user = 1004
    await driver.run([active(user, T0)])
    await driver.run([active(user, T0 - DAY), active(user, T0)])  # older and repeated: no-ops
    assert rec(user) == {"active_at": T0, "stale": False, "floor": 0}
    await driver.run([active(user, T0 + DAY)])
    assert rec(user)["active_at"] == T0 + DAY
    assert sinks.cassandra.reads() == [] and sinks.cassandra.writes() == []
    assert sinks.timelines.invalidated() == set()


# --- follow / unfollow / backfill ---------------------------------------------------------


async def test_follow_backfills_the_authors_newest_tweets(driver: AgentDriver, sinks: Any, small_limits: Any) -> None:
    few, many = users_on_one_partition(2, start=1100)
    sinks.cassandra.seed_author_timeline(A, [1, 2])
    sinks.cassandra.seed_author_timeline(B, [11, 12, 13, 14, 15])

    await driver.run([ops_msg(follow(few, A, at=T0 + 1), follow(many, B, at=T0 + 2))])

    writes = sinks.cassandra.writes()
    assert sorted(timeline_writes(sinks)) == [
        ("insert_user_tl", (few, 1, A)),
        ("insert_user_tl", (few, 2, A)),
        ("insert_user_tl", (many, 13, B)),
        ("insert_user_tl", (many, 14, B)),
        ("insert_user_tl", (many, 15, B)),
    ]
    assert ("insert_following", (few, A, T0 + 1)) in writes
    assert ("insert_following", (many, B, T0 + 2)) in writes
    # more than backfill_limit tweets: the floor goes up to keep "complete above the floor"
    assert meta_writes(sinks) == [(many, 12, False)]
    assert rec(many)["floor"] == 12 and (rec(few) or {}).get("floor", 0) == 0
    assert sinks.timelines.invalidated() == {many}
    assert sinks.timelines.pushed() == {few: {(1, A), (2, A)}}
    assert sinks.cassandra.reads("author_tl_below") == [
        ("author_tl_below", (A, 2**63 - 1, 4)),
        ("author_tl_below", (B, 2**63 - 1, 4)),
    ]
    assert sorted(following_edges.data.keys()) == [b"%d:%d" % (few, A), b"%d:%d" % (many, B)]


async def test_one_message_reads_each_author_timeline_once(
    driver: AgentDriver, sinks: Any, small_limits: Any
) -> None:
    """Many followers of one account in a message (a popular account being followed, a
    demotion backfill): one read of its timeline for all of them, not one per follower."""
    fans = users_on_one_partition(4, start=3000)
    leaver = fans.pop()
    sinks.cassandra.seed_author_timeline(A, [5, 6, 7, 8, 9])  # 5 > limit 3: floor 6
    await driver.run([ops_msg(follow(leaver, A))])
    sinks.cassandra.calls.clear()
    await driver.run([ops_msg(*(follow(f, A) for f in fans), unfollow(leaver, A), follow(fans[0], B))])
    assert sinks.cassandra.reads("author_tl_below") == [
        ("author_tl_below", (A, 2**63 - 1, 4)), ("author_tl_below", (B, 2**63 - 1, 4)),
    ]
    assert sinks.cassandra.reads("author_tl_above") == [("author_tl_above", (A, 0, 3 * 4))]
    for fan in fans:
        assert {t for (u, t) in sinks.cassandra.user_tl_rows() if u == fan} == {7, 8, 9}
        assert rec(fan)["floor"] == 6
    assert [t for (u, t) in sinks.cassandra.user_tl_rows() if u == leaver] == [], "floor 6: 7, 8, 9 removed"


async def test_follow_by_an_inactive_user_marks_stale_instead_of_backfilling(
    driver: AgentDriver, sinks: Any
) -> None:
    user = 1005
    sinks.cassandra.seed_author_timeline(A, [1, 2])
    await driver.run([active(user, T0)])
    await driver.run([ops_msg(follow(user, A, at=T0 + 31 * DAY))])
    assert timeline_writes(sinks) == []
    assert rec(user)["stale"] is True
    assert ("insert_following", (user, A, T0 + 31 * DAY)) in sinks.cassandra.writes(), "kept for the rebuild"


async def test_unfollow_removes_the_authors_tweets(driver: AgentDriver, sinks: Any) -> None:
    user = 1006
    sinks.cassandra.seed_author_timeline(A, [1, 2, 3])
    sinks.cassandra.seed_author_timeline(B, [4])
    await driver.run([ops_msg(follow(user, A), follow(user, B))])
    assert sinks.cassandra.user_tl[user] == {1: A, 2: A, 3: A, 4: B}

    await driver.run([ops_msg(unfollow(user, A))])

    assert sinks.cassandra.user_tl[user] == {4: B}
    assert ("delete_following", (user, A)) in sinks.cassandra.writes()
    assert (user, A) not in sinks.cassandra.following
    assert sorted(following_edges.data.keys()) == [b"%d:%d" % (user, B)]
    assert sinks.timelines.unpushed() == {user: {(1, A), (2, A), (3, A)}}


async def test_demotion_backfill_adds_only_tweets_above_since_and_skips_stale_users(
    driver: AgentDriver, sinks: Any
) -> None:
    fresh, stale = users_on_one_partition(2, start=1200)
    await driver.run([active(stale, T0)])
    await driver.run([ops_msg(add(1, [stale], created_at=T0 + 31 * DAY))])  # -> stale
    sinks.cassandra.seed_author_timeline(A, [5, 6, 7])

    await driver.run([ops_msg({"op": "backfill", "author": A, "above": 5, "to": [fresh, stale]})])

    assert sorted(timeline_writes(sinks)) == [
        ("insert_user_tl", (fresh, 6, A)),
        ("insert_user_tl", (fresh, 7, A)),
    ]


# --- batch semantics ----------------------------------------------------------------------


async def test_last_op_on_a_row_wins_within_a_batch(driver: AgentDriver, sinks: Any) -> None:
    u1, u2, u3 = users_on_one_partition(3, start=1300)
    await driver.run([
        ops_msg(add(80, [u1]), remove(80, [u1])),  # add then remove: delete only
        ops_msg(remove(81, [u2]), add(81, [u2])),  # remove then add: insert only
        ops_msg(add(82, [u3]), add(82, [u3])),  # twice: one insert
    ])
    assert timeline_writes(sinks) == [
        ("delete_user_tl", (u1, 80)),
        ("insert_user_tl", (u2, 81, A)),
        ("insert_user_tl", (u3, 82, A)),
    ]
    assert sinks.timelines.pushed() == {u2: {(81, A)}, u3: {(82, A)}}
    assert sinks.timelines.unpushed() == {u1: {(80, A)}}


async def test_unfollow_then_refollow_in_one_batch_keeps_the_tweets(driver: AgentDriver, sinks: Any) -> None:
    user = 1007
    sinks.cassandra.seed_author_timeline(A, [1, 2])
    await driver.run([ops_msg(follow(user))])
    await driver.run([ops_msg(unfollow(user), follow(user, at=T0 + 5))])
    assert sinks.cassandra.user_tl[user] == {1: A, 2: A}
    assert sinks.cassandra.following[(user, A)] == T0 + 5


async def test_replaying_a_batch_writes_the_same(driver: AgentDriver, sinks: Any) -> None:
    u1, u2 = users_on_one_partition(2, start=1400)
    sinks.cassandra.seed_author_timeline(A, [1, 2])
    sinks.cassandra.seed_author_timeline(B, [3])
    batch = [
        active(u2, T0),
        ops_msg(follow(u1, A), follow(u2, B), add(9, [u1, u2]), remove(2, [u1]), unfollow(u2, B)),
        ops_msg(add(10, [u1, u2])),
    ]
    await driver.run(batch)
    first = sinks.cassandra.write_batches[-1]
    state = (dict(sinks.cassandra.user_tl), dict(sinks.cassandra.following))
    tables = (dict(recipients.data.items()), dict(following_edges.data.items()))
    pushed = sinks.timelines.pushes[-1], sinks.timelines.unpushes[-1]

    await driver.run(batch)

    assert sinks.cassandra.write_batches[-1] == first
    assert (dict(sinks.cassandra.user_tl), dict(sinks.cassandra.following)) == state
    assert (dict(recipients.data.items()), dict(following_edges.data.items())) == tables
    assert (sinks.timelines.pushes[-1], sinks.timelines.unpushes[-1]) == pushed
    assert sinks.cassandra.user_tl[u1] == {1: A, 9: A, 10: A}
    assert sinks.cassandra.user_tl[u2] == {9: A, 10: A}


async def test_replaying_a_batch_that_marks_a_user_stale_leaves_the_same_state(
    driver: AgentDriver, sinks: Any
) -> None:
    idle, busy = users_on_one_partition(2, start=1500)
    await driver.run([active(idle, T0 - 40 * DAY)])
    batch = [ops_msg(add(20, [idle, busy]), add(21, [busy]))]
    await driver.run(batch)
    state = (dict(sinks.cassandra.user_tl), dict(sinks.cassandra.meta), dict(recipients.data.items()))
    await driver.run(batch)
    assert (dict(sinks.cassandra.user_tl), dict(sinks.cassandra.meta), dict(recipients.data.items())) == state
    assert sinks.cassandra.user_tl == {busy: {20: A, 21: A}}


async def test_cassandra_is_written_before_the_redis_caches_are_touched(
    driver: AgentDriver, sinks: Any, journal: Journal, small_limits: Any
) -> None:
    """Readers refill caches from Cassandra, version-checked: Redis changes must come after."""
    u1, u2 = users_on_one_partition(2, start=1600)
    sinks.cassandra.seed_author_timeline(B, [1, 2, 3, 4, 5])
    await driver.run([ops_msg(add(40, [u1]), follow(u2, B), unfollow(u1, B))])
    written = last(journal, "cassandra", "insert_user_tl", "delete_user_tl", "insert_following",
                   "delete_following", "set_meta")
    assert written >= 0
    redis = [i for i, (store, _, _) in enumerate(journal) if store in ("timelines", "redis")]
    assert redis and min(redis) > written
    assert sinks.timelines.pushed() == {u1: {(40, A)}}
    assert sinks.timelines.invalidated() == {u2}, "floor raised by the backfill: dropped, not patched"
    # the cached following lists of both users are dropped (and their versions bumped)
    following = sinks.following
    assert {c[1] for c in sinks.redis.commands("delete")} >= {following.key(u1), following.key(u2)}
    assert {c[1] for c in sinks.redis.commands("set")} >= {following.version_key(u1), following.version_key(u2)}


# --- replay after a crash -------------------------------------------------------------------
#
# At-least-once: a worker that dies mid-batch is replayed from the last committed
# offset, but its tables are not rolled back (RocksDB is written at once and the
# changelog is produced before the offsets are committed). Stage 1 is written for
# that (status is re-published for every touched author, ``backfill_pending``
# survives until the backfill is published). Stage 2 keeps ``mirror_pending`` and
# ``rebuild_pending`` flags in the ``recipients`` table until the batch's chunks have written
# the batch, so a replay whose table already holds a transition still mirrors it and
# still rebuilds. The crash here is a chunk's Cassandra write failing with a
# non-retried error.


async def crash_then_replay(driver: AgentDriver, sinks: Any, batch: list[Msg]) -> None:
    sinks.cassandra.crash_on_next_write = True
    with pytest.raises(SimulatedCrash):
        await driver.run(batch)
    deliver_mod.MARKS.clear()  # a new process: nothing of the dead one's memory
    deliver_mod._LAST_WRITES = None
    await driver.run(batch)


async def test_replay_after_a_crash_still_records_the_raised_floor(
    driver: AgentDriver, sinks: Any, small_limits: Any
) -> None:
    user = 1701
    sinks.cassandra.seed_author_timeline(B, [11, 12, 13, 14, 15])
    await crash_then_replay(driver, sinks, [ops_msg(follow(user, B))])
    assert sinks.cassandra.user_tl[user] == {13: B, 14: B, 15: B}
    # Without the floor the reader takes the 3 rows as B's complete timeline: 11 and 12 are never shown.
    assert sinks.cassandra.meta.get(user) == (12, False)


async def test_replay_after_a_crash_still_marks_the_skipped_user_stale(driver: AgentDriver, sinks: Any) -> None:
    idle = 1702
    await driver.run([active(idle, T0 - 40 * DAY)])
    await crash_then_replay(driver, sinks, [ops_msg(add(20, [idle]))])
    assert rec(idle)["stale"] is True
    # Without it the reader serves the materialized timeline, which lacks tweet 20.
    assert sinks.cassandra.meta.get(idle) == (0, True)


async def test_replay_after_a_crash_still_rebuilds(driver: AgentDriver, sinks: Any) -> None:
    user = 1703
    await driver.run([active(user, T0), ops_msg(follow(user, A, at=T0))])
    sinks.cassandra.seed_author_timeline(A, [10, 30])
    await driver.run([ops_msg(add(30, [user], created_at=T0 + 31 * DAY))])
    assert sinks.cassandra.meta[user] == (0, True)

    await crash_then_replay(driver, sinks, [active(user, T0 + 32 * DAY)])

    # clear_user_tl ran before the crash; the replay sees stale=False and skips the rebuild
    assert sinks.cassandra.user_tl.get(user) == {10: A, 30: A}
    assert sinks.cassandra.meta[user] == (0, False)


# --- bad input ----------------------------------------------------------------------------


async def test_bad_deliveries_are_dead_lettered_and_misrouted_activity_is_rerouted(
    driver: AgentDriver, sinks: Any, sent: SentLog
) -> None:
    user = 1008
    p = part(user)
    wrong = (p + 1) % P
    misrouted = Msg(ACTIVITY, encode_key(user), active(user, T0).value, wrong)
    bad = [
        Msg(DELIVERIES, encode_key(p), b"not json", p),
        Msg(DELIVERIES, encode_key(p), b'{"ops": [{"op": "explode"}]}', p),
        Msg(DELIVERIES, encode_key(p), b'{"ops": [{"op": "add", "tweet_id": 1, "author_id": 2, "created_at": 3}]}', p),
        Msg(ACTIVITY, encode_key(user), b'{"type": "user_active", "user_id": 0, "at": 1}', p),
    ]
    await driver.run(bad[:2] + [misrouted] + bad[2:] + [ops_msg(add(30, [user]))])

    reasons = {d["offset"]: d["reason"] for d in sent.dead_letters()}
    assert sorted(reasons) == [0, 1, 3, 4]  # 2 is the misrouted activity, 5 the good delivery
    assert reasons[0].startswith("delivery is not valid UTF-8 JSON")
    assert reasons[1].startswith("op 0 has no known 'op' name")
    # Checked at decode now: a malformed op never reaches the tables or the stores.
    assert reasons[3] == "op 0 (add) is missing field 'to'"
    assert reasons[4] == "field 'user_id' must be an id in 1..9223372036854775807, got 0"
    assert {d["stage"] for d in sent.dead_letters()} == {"deliver"}
    assert [(s.key, s.value, s.partition) for s in sent.on(ACTIVITY)] == [(misrouted.key, misrouted.value, p)]
    assert rec(user) is None or rec(user)["active_at"] is None, "the misrouted activity was not applied"
    assert timeline_writes(sinks) == [("insert_user_tl", (user, 30, A))]


# --- live notices ------------------------------------------------------------------------


async def test_a_batch_publishes_what_it_wrote_per_user_after_the_stores(
    driver: AgentDriver, sinks: Any, journal: Journal
) -> None:
    from policies.stream import Notice, decode_notice

    u1, u2 = users_on_one_partition(2, start=1700)
    sinks.cassandra.seed_author_timeline(B, [7])
    await driver.run([ops_msg(add(40, [u1, u2]), add(41, [u1]), remove(30, [u2]), follow(u1, B), unfollow(u2, B))])
    prefix = settings.redis_prefix
    got = {channel: decode_notice(raw) for channel, raw in sinks.redis.published}
    assert all(n.sent_at > 1e9 for n in got.values()), "each notice says when it was published"
    got = {channel: n._replace(sent_at=0.0) for channel, n in got.items()}
    assert got == {
        f"{prefix}live:u:{u1}": Notice(added=((7, B), (40, A), (41, A)), followed=(B,), reset=False),
        f"{prefix}live:u:{u2}": Notice(added=((40, A),), deleted=((30, A),), unfollowed=(B,)),
    }
    published = first(journal, "redis", "publish")
    assert published > last(journal, "cassandra", "insert_user_tl", "delete_user_tl", "set_meta")
    assert published > last(journal, "timelines", "push_many", "unpush_many", "invalidate")


async def test_only_users_with_an_open_stream_get_a_notice(driver: AgentDriver, sinks: Any) -> None:
    u1, u2 = users_on_one_partition(2, start=1800)
    prefix = settings.redis_prefix
    sinks.redis.listening = {f"{prefix}live:u:{u2}"}  # PUBSUB NUMSUB: only u2's stream is open
    await driver.run([ops_msg(add(42, [u1, u2]))])
    assert [channel for channel, _ in sinks.redis.published] == [f"{prefix}live:u:{u2}"]
    sinks.redis.listening = set()
    await driver.run([ops_msg(add(43, [u1, u2]))])
    assert len(sinks.redis.published) == 1, "nobody listens: nothing is encoded or published"


# --- chunks ------------------------------------------------------------------------------


def mixed_batch(users: list[int]) -> list[Msg]:
    u1, u2, u3, u4, u5 = users
    return [ops_msg(add(40, [u1, u2, u3, u4]), add(41, [u1, u2, u3]), remove(30, [u4]), follow(u5, B),
                    unfollow(u3, B), add(42, [u5, u1]))]


def outcome(sinks: Any) -> tuple:
    return (dict(sinks.cassandra.user_tl), sorted(meta_writes(sinks)), sinks.timelines.pushed(),
            sinks.timelines.unpushed(), sinks.timelines.invalidated(), dict(recipients.data.items()))


@pytest.mark.parametrize("chunk_rows", [1, 2, 3])
async def test_a_batch_in_chunks_writes_what_one_write_of_it_does(
    driver: AgentDriver, sinks: Any, journal: Journal, small_limits: Any, monkeypatch: pytest.MonkeyPatch,
    chunk_rows: int,
) -> None:
    users = users_on_one_partition(5, start=1900)
    sinks.cassandra.seed_author_timeline(B, [1, 2, 3, 4, 5])
    await driver.run(mixed_batch(users))
    whole = outcome(sinks)
    assert len(sinks.cassandra.writes_named("insert_user_tl", "delete_user_tl")) > chunk_rows * 3

    reset_tables()
    fresh = make_sinks(deliver_mod.settings)
    fresh.cassandra.seed_author_timeline(B, [1, 2, 3, 4, 5])
    monkeypatch.setattr(agent_sinks, "_sinks", fresh)
    journal.clear()
    fresh.cassandra.journal = fresh.timelines.journal = journal
    monkeypatch.setattr(deliver_mod, "settings", small_limits.replace(deliver_chunk_rows=chunk_rows))
    await driver.run(mixed_batch(users))
    assert outcome(fresh) == whole
    # Per user: every Cassandra write (rows, following, metadata) before any Redis change of theirs.
    cassandra_at: dict[int, int] = {}
    redis_at: dict[int, int] = {}
    for i, (store, what, params) in enumerate(journal):
        if store == "cassandra" and what in ("insert_user_tl", "delete_user_tl", "insert_following",
                                              "delete_following", "set_meta"):
            cassandra_at[params[0]] = i
        elif store == "timelines":
            for user in params:
                redis_at.setdefault(user, i)
    assert redis_at and all(cassandra_at[u] < i for u, i in redis_at.items())
    # Progressive: the first chunk's cache changes come before the last chunk's Cassandra writes.
    assert min(redis_at.values()) < max(cassandra_at.values())


async def test_chunks_in_flight_are_bounded_and_an_error_stops_the_others(
    sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliver_mod, "settings", settings.replace(deliver_chunk_rows=1, deliver_chunks_in_flight=2))
    batch = deliver_mod.RecipientBatch(sinks)
    for user in range(3000, 3006):
        batch.rows[(user, 50)] = (True, A)
    running, peak, release, fail = 0, 0, asyncio.Event(), asyncio.Event()
    started: list[int] = []
    written: list[int] = []

    async def slow(items: Any) -> None:
        nonlocal running, peak
        items = list(items)
        if not items:
            return
        user = items[0][1][0]
        started.append(user)
        running += 1
        peak = max(peak, running)
        try:
            if user == 3001:
                await fail.wait()
                raise RuntimeError("the store refused chunk 3001")
            await release.wait()
            written.append(user)
        finally:
            running -= 1

    monkeypatch.setattr(sinks.cassandra, "execute_many", slow)
    writer = deliver_mod.ChunkWriter(deliver_mod.settings.deliver_chunks_in_flight)
    writer.start(batch)
    task = asyncio.ensure_future(writer.wait())
    for _ in range(10):
        await asyncio.sleep(0)
    assert started == [3000, 3001] and running == 2, "two chunks in flight, in order; the others wait"
    fail.set()
    with pytest.raises(RuntimeError, match="chunk 3001"):
        await task
    assert running == 0 and peak == 2, "the chunk still in flight was cancelled"
    assert started == [3000, 3001] and written == [], "no later chunk started"
    assert sinks.timelines.pushed() == {}, "nothing reached Redis"
    release.set()


async def test_a_partitions_chunks_are_written_while_the_next_partition_is_handled(
    driver: AgentDriver, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = users_on_one_partition(2, start=4000)
    second = users_on_one_partition(2, start=next(u for u in range(4001, 9000) if part(u) != part(first[0])))
    order: list[tuple[str, int]] = []
    handle, write = deliver_mod.RecipientBatch.handle, deliver_mod.RecipientBatch.write

    async def recording_handle(self: Any, payload: Any) -> None:
        order.append(("handle", part(payload[0].to[0])))
        await handle(self, payload)

    async def recording_write(self: Any, w: Any) -> None:
        order.append(("write", part(next(iter(w.rows))[0])))
        await write(self, w)

    for user in first + second:
        await driver.run([active(user, T0)])
    monkeypatch.setattr(deliver_mod.RecipientBatch, "handle", recording_handle)
    monkeypatch.setattr(deliver_mod.RecipientBatch, "write", recording_write)
    await driver.run([ops_msg(add(10, first[:1])), ops_msg(add(11, first[1:])),
                      ops_msg(add(12, second[:1])), ops_msg(add(13, second[1:]))])
    p1, p2 = part(first[0]), part(second[0])
    # Less than a chunk's worth of writes: the two partitions are one chunk, written after both.
    assert order == [("handle", p1), ("handle", p1), ("handle", p2), ("handle", p2), ("write", p1)]
    assert {(u, t) for (_, (u, t, _)) in timeline_writes(sinks)} >= {
        (first[0], 10), (first[1], 11), (second[0], 12), (second[1], 13)}
    # A chunk's worth (one row here) once the first partition is walked: its chunks are
    # written before the second partition is walked.
    monkeypatch.setattr(deliver_mod, "settings", deliver_mod.settings.replace(deliver_chunk_rows=1))
    order.clear()
    await driver.run([ops_msg(add(20, first[:1])), ops_msg(add(21, first[1:])),
                      ops_msg(add(22, second[:1])), ops_msg(add(23, second[1:]))])
    assert order == [("handle", p1), ("handle", p1), ("write", p1), ("write", p1),
                     ("handle", p2), ("handle", p2), ("write", p2), ("write", p2)]
    assert {(u, t) for (_, (u, t, _)) in timeline_writes(sinks)} >= {
        (first[0], 20), (first[1], 21), (second[0], 22), (second[1], 23)}


# --- batches overlapped: the next one is walked while the previous one is written ---------


async def overlapped_run(monkeypatch: pytest.MonkeyPatch, steps: Any) -> None:
    """Run ``steps(put, begun, tc)`` against the agent in one test context, one message per
    batch, the agent overlapping batches (tests hold writes with ``sinks.cassandra.held``).
    ``begun``: how many batches were walked so far."""
    from tests.unit.agent_doubles import one_batch, put_messages

    monkeypatch.setattr(deliver_mod, "settings", deliver_mod.settings.replace(deliver_overlap=1))
    begun: list[int] = []
    original = deliver_mod.begin_recipient_batch

    async def counting(s: Any, events: Any) -> Any:
        done = await original(s, events)
        begun.append(len(begun) + 1)
        return done

    monkeypatch.setattr(deliver_mod, "begin_recipient_batch", counting)
    one_batch(monkeypatch, deliver_mod, 1)
    async with deliver_mod.deliver.test_context() as tc:
        async def put(msg: Msg) -> None:
            await put_messages(tc, [msg])

        await steps(put, begun, tc)


async def until(tc: Any, check: Any) -> None:
    """Until ``check()`` (raises if the agent crashed or nothing happens in time)."""
    from tests.unit.agent_doubles import wait_for_batch

    flag = asyncio.Event()

    async def watch() -> None:
        while not check():
            await asyncio.sleep(0.002)
        flag.set()

    task = asyncio.ensure_future(watch())
    try:
        await wait_for_batch(tc, flag)
    finally:
        task.cancel()


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_the_next_batch_is_walked_while_the_previous_is_written_and_written_after_it(
    driver: AgentDriver, monkeypatch: pytest.MonkeyPatch, sinks: Any
) -> None:
    user = 1801
    await driver.run([active(user, T0)])
    sinks.cassandra.held["insert_user_tl"] = inserts = asyncio.Event()

    async def steps(put: Any, begun: list[int], tc: Any) -> None:
        await put(ops_msg(add(10, [user])))
        await until(tc, lambda: len(begun) == 1)
        await put(ops_msg(remove(10, [user])))
        await until(tc, lambda: len(begun) == 2)  # walked while the first batch's insert waits
        await settle()
        assert sinks.cassandra.user_tl.get(user) is None, "the delete waits for the earlier insert"
        inserts.set()
        await until(tc, lambda: sinks.cassandra.user_tl.get(user) == {})

    await overlapped_run(monkeypatch, steps)
    assert [n for n, _ in timeline_writes(sinks)] == ["insert_user_tl", "delete_user_tl"], "in the log's order"


async def test_a_batch_does_not_clear_the_pending_flags_a_later_batch_set(
    driver: AgentDriver, monkeypatch: pytest.MonkeyPatch, sinks: Any
) -> None:
    user = 1802
    await driver.run([active(user, T0), ops_msg(follow(user, A, at=T0))])
    sinks.cassandra.seed_author_timeline(A, [10, 30])
    sinks.cassandra.held["set_meta"] = metas = asyncio.Event()
    sinks.cassandra.held["clear_user_tl"] = clears = asyncio.Event()

    async def steps(put: Any, begun: list[int], tc: Any) -> None:
        await put(ops_msg(add(30, [user], created_at=T0 + 31 * DAY)))  # inactive: marked stale
        await until(tc, lambda: len(begun) == 1)
        await put(active(user, T0 + 32 * DAY))  # returns: rebuilt
        await until(tc, lambda: len(begun) == 2)
        assert (user, 0, True) not in meta_writes(sinks), "walked while the first batch's writes wait"
        metas.set()  # the first batch is written and confirmed; the rebuild's clear still waits
        await until(tc, lambda: (user, 0, True) in meta_writes(sinks))
        await settle()
        assert rec(user).get("rebuild_pending") is True, "the rebuild is not written: a crash now redoes it"
        clears.set()
        await until(tc, lambda: "rebuild_pending" not in rec(user))

    await overlapped_run(monkeypatch, steps)
    assert sinks.cassandra.user_tl[user] == {10: A, 30: A}
    assert "mirror_pending" not in rec(user)


async def test_a_flag_an_earlier_batch_still_writes_is_not_a_leftover_to_mirror_again(
    driver: AgentDriver, monkeypatch: pytest.MonkeyPatch, sinks: Any
) -> None:
    user = 1803
    await driver.run([active(user, T0)])
    before = len(meta_writes(sinks))
    sinks.cassandra.held["set_meta"] = metas = asyncio.Event()

    async def steps(put: Any, begun: list[int], tc: Any) -> None:
        await put(ops_msg(add(30, [user], created_at=T0 + 31 * DAY)))  # inactive: marked stale
        await until(tc, lambda: len(begun) == 1)
        await put(ops_msg(add(31, [user], created_at=T0 + 31 * DAY)))  # stale: nothing to mirror
        await until(tc, lambda: len(begun) == 2)
        metas.set()
        await until(tc, lambda: "mirror_pending" not in rec(user))

    await overlapped_run(monkeypatch, steps)
    assert meta_writes(sinks)[before:] == [(user, 0, True)], "mirrored once"


async def test_writes_that_failed_are_done_again_with_the_batches_after_them_in_order(
    driver: AgentDriver, monkeypatch: pytest.MonkeyPatch, sinks: Any
) -> None:
    user = 1804
    await driver.run([active(user, T0)])
    sinks.cassandra.held["insert_user_tl"] = inserts = asyncio.Event()

    async def steps(put: Any, begun: list[int], tc: Any) -> None:
        await put(ops_msg(add(10, [user])))
        await until(tc, lambda: len(begun) == 1)
        await put(ops_msg(remove(10, [user]), add(11, [user])))
        await until(tc, lambda: len(begun) == 2)
        sinks.cassandra.crash_on_next_write = True  # the first batch's insert fails (not transient)
        inserts.set()
        await until(tc, lambda: sinks.cassandra.user_tl.get(user) == {11: A})
        await settle()

    await overlapped_run(monkeypatch, steps)
    names = [(n, p[1]) for n, p in timeline_writes(sinks)]
    assert names == [("insert_user_tl", 10), ("delete_user_tl", 10), ("insert_user_tl", 11)], \
        "the second batch wrote nothing before the first was written again"


async def test_the_next_batch_waits_until_every_chunk_of_the_previous_has_started_writing(
    driver: AgentDriver, monkeypatch: pytest.MonkeyPatch, sinks: Any
) -> None:
    """It then gathers what arrives while they are written, rather than being walked at once
    (small batches cost more per delivery)."""
    first_user = 1805
    second_user = next(u for u in range(first_user + 1, first_user + 500) if part(u) == part(first_user))
    await driver.run([active(first_user, T0), active(second_user, T0)])
    sinks.cassandra.held["insert_user_tl"] = inserts = asyncio.Event()
    one_chunk_at_once = deliver_mod.settings.replace(deliver_chunk_rows=1, deliver_chunks_in_flight=1)
    monkeypatch.setattr(deliver_mod, "settings", one_chunk_at_once)

    async def steps(put: Any, begun: list[int], tc: Any) -> None:
        await put(ops_msg(add(10, [first_user, second_user])))  # two chunks, one in flight
        await until(tc, lambda: len(begun) == 1)
        await put(ops_msg(add(11, [first_user])))
        await settle()
        assert len(begun) == 1, "not walked while a chunk of the previous batch waits for a slot"
        inserts.set()
        await until(tc, lambda: len(begun) == 2)
        await until(tc, lambda: sinks.cassandra.user_tl.get(first_user) == {10: A, 11: A})

    await overlapped_run(monkeypatch, steps)
    assert sinks.cassandra.user_tl[second_user] == {10: A}
