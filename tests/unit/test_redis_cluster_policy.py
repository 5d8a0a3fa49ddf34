"""Pure parts of the Redis Cluster support: hash tags and slots, CLUSTER NODES, WAIT's target."""
from __future__ import annotations

import pytest
import redis.exceptions
from redis.crc import key_slot

from policies.failures import TRANSIENT, classify
from policies.redis_cluster import (
    group_by_slot, live_masters, myself, parse_nodes, required_acks, slot_of, slots_covered, tagged,
)
from query.view_cluster import body_ids
from settings import Settings
from sinks.redis_celebrities import RedisCelebrities
from sinks.redis_client import Acks, NotReplicated, startup_nodes
from sinks.redis_following import RedisFollowing
from sinks.redis_timeline import RedisTimelines, member

NODES = """\
07c3 127.0.0.1:30001@30007 myself,master - 0 0 1 connected 0-5460
a1b2 127.0.0.1:30002@30008 master - 0 1700000000000 2 connected 5461-10922
c3d4 127.0.0.1:30003@30009 master,fail - 1700000000000 1700000000000 3 disconnected 10923-16383
e5f6 127.0.0.1:30004@30010 slave 07c3 0 1700000000000 1 connected
a7b8 127.0.0.1:30005@30011 slave a1b2 0 1700000000000 2 connected
c9d0 127.0.0.1:30006@30012 slave,fail c3d4 0 1700000000000 3 disconnected
"""


class _Fake:
    """Enough of a client for the key functions (no server)."""

    def register_script(self, text):
        return text


def test_a_users_keys_share_one_slot_and_users_spread_over_slots():
    fake = _Fake()
    timelines = RedisTimelines(fake, prefix="tl:", cap=800, ttl_s=60)
    following = RedisFollowing(fake, prefix="tl:")
    for user in (1, 42, 10**15):
        keys = [timelines.key(user), timelines.version_key(user), following.key(user), following.version_key(user)]
        assert len({slot_of(k) for k in keys}) == 1, keys
        assert slot_of(keys[0]) == key_slot(str(user).encode())
    assert len({slot_of(timelines.key(u)) for u in range(200)}) > 150
    assert tagged("ns:t:", "home", 7) == "ns:t:home:{7}"


def test_the_celebrity_set_and_its_version_share_a_slot_and_keep_the_sets_name():
    celebrities = RedisCelebrities(_Fake(), prefix="tl:")
    assert celebrities.key() == "tl:celebrities"
    assert slot_of(celebrities.key()) == slot_of(celebrities.version_key())
    assert celebrities.version_key().startswith("tl:")  # a namespace's scan by prefix finds it


def test_group_by_slot_keeps_order_within_a_slot_and_covers_every_item():
    keys = [f"tl:tweet:{i}" for i in range(100)] + ["tl:home:{5}", "tl:homev:{5}"]
    groups = group_by_slot(keys)
    assert sorted(k for g in groups.values() for k in g) == sorted(keys)
    for slot, group in groups.items():
        assert all(slot_of(k) == slot for k in group)
        assert group == [k for k in keys if slot_of(k) == slot]
    assert groups[slot_of("x{5}")][-2:] == ["tl:home:{5}", "tl:homev:{5}"]
    pairs = group_by_slot([(1, "a{u1}"), (2, "b{u1}"), (3, "c")], key_of=lambda p: p[1])
    assert pairs[slot_of("u1")] == [(1, "a{u1}"), (2, "b{u1}")]


def test_cluster_nodes_parsed():
    rows = parse_nodes(NODES.encode())
    assert len(rows) == 6
    me = myself(rows)
    assert me is not None and me.node_id == "07c3" and me.slots == ((0, 5460),) and me.is_master
    failed = next(r for r in rows if r.node_id == "c3d4")
    assert failed.failed and failed.address == "127.0.0.1:30003"
    assert [r.port for r in live_masters(rows)] == [30001, 30002]
    assert slots_covered(rows) == 10923  # the failed master's slots are not covered
    assert next(r for r in rows if r.node_id == "e5f6").master_id == "07c3"
    assert parse_nodes("x 127.0.0.1:1@2 master - 0 0 1 connected 5 [6->-abc]")[0].slots == ((5, 5),)


def test_required_acks_counts_replicas_the_cluster_has_not_failed():
    rows = parse_nodes(NODES)
    assert required_acks(1, "07c3", rows) == 1
    assert required_acks(2, "07c3", rows) == 1  # it has one replica
    assert required_acks(1, "c3d4", rows) == 0  # its replica failed: it cannot be promoted
    suspected = parse_nodes(NODES.replace("slave a1b2", "slave,fail? a1b2"))
    assert required_acks(1, "a1b2", suspected) == 1  # only suspected: could still be promoted
    assert required_acks(0, "07c3", rows) == 0


def test_startup_nodes_from_the_url():
    assert startup_nodes("redis://127.0.0.1:7000,127.0.0.2:7001/0") == [("127.0.0.1", 7000), ("127.0.0.2", 7001)]
    assert startup_nodes("redis://10.0.0.1") == [("10.0.0.1", 6379)]
    assert startup_nodes("redis://user:pw@h:1") == [("h", 1)]


def test_acks_only_on_a_cluster():
    assert Acks.from_settings(Settings()) is None
    assert Acks.from_settings(Settings(redis_cluster=True)) == Acks(1, 1000)
    assert Acks.from_settings(Settings(redis_cluster=True, redis_wait_replicas=0)) is None


def test_cluster_errors_are_transient():
    for exc in (NotReplicated("0 of 1"), redis.exceptions.MovedError("3999 127.0.0.1:6381"),
                redis.exceptions.AskError("3999 127.0.0.1:6381"), redis.exceptions.ClusterDownError("down"),
                redis.exceptions.SlotNotCoveredError("slot"), redis.exceptions.ClusterError("ttl"),
                redis.exceptions.TryAgainError("again")):
        assert classify(exc) == TRANSIENT, exc
    assert classify(redis.exceptions.ResponseError("WRONGTYPE")) != TRANSIENT


def test_body_ids_follow_the_view_scripts_rule():
    window = [member(30, 7).encode(), member(20, 8).encode(), member(0, 5).encode()]
    assert body_ids(window, 0, []) == [(0, 30), (1, 20)]  # following not cached: every body
    assert body_ids(window, 3, [1, 0, 0]) == [(0, 30)]  # cached: followed authors only


# --- routing before the client knows a default node (sinks/redis_client.KeyedPolicies) ------


async def test_keyed_commands_are_routed_by_slot_even_before_the_client_is_initialized():
    from redis._parsers.commands import RequestPolicy
    from redis.asyncio import RedisCluster
    from sinks.redis_client import KeyedPolicies, connect

    client = connect(Settings(redis_cluster=True, redis_url="redis://127.0.0.1:1,127.0.0.1:2"))
    assert isinstance(client._policy_resolver, KeyedPolicies)  # no connection made
    assert client.get_default_node() is None  # what redis-py's own fallback sends to a random primary
    resolver = KeyedPolicies()
    for command in ("evalsha", "eval", "get", "sismember", "smismember", "hgetall", "zrevrangebylex", "publish"):
        assert (await resolver.resolve(command)).request_policy == RequestPolicy.DEFAULT_KEYED, command
    # Commands with a node flag keep redis-py's own routing (the flag decides).
    for command in ("cluster nodes", "ping", "script load", "info"):
        assert command.upper() in RedisCluster.COMMAND_FLAGS
        assert await resolver.resolve(command) is None, command


async def test_a_read_whose_redis_py_connection_broke_is_read_without_redis_and_a_bug_of_ours_is_not():
    from redis.asyncio.connection import Connection
    from query.page import Page
    from query.reader import _cache_or_store
    from sinks.redis_client import raised_by_redis_py

    calls = []

    async def broken_connection(cache: bool) -> Page:
        calls.append(cache)
        if cache:  # what a connection disconnected under a call raises: _writer is None
            await Connection()._send_packed_command([b"PING\r\n"])
        return Page([], None, "cache" if cache else "store")

    page = await _cache_or_store("test", broken_connection)
    assert calls == [True, False] and page.stats.cache_bypassed

    async def our_bug(cache: bool) -> Page:
        return None.stats  # type: ignore[attr-defined]

    with pytest.raises(AttributeError) as caught:
        await _cache_or_store("test", our_bug)
    assert not raised_by_redis_py(caught.value)
