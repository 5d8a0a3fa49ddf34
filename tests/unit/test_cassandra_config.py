"""The local Cassandra's configuration: durability mode (TL_CASSANDRA_COMMITLOG_SYNC), threads, memtables."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from localenv.cassandra_server import Cassandra
from settings import Settings


def _config(mode: str, **more) -> dict:
    settings = dataclasses.replace(Settings(), cassandra_commitlog_sync=mode, **more)
    return yaml.safe_load(Cassandra(settings=settings, state=Path("/nowhere"))._yaml())


def test_batch_waits_for_the_disk():
    conf = _config("batch")
    assert conf["commitlog_sync"] == "batch" and "commitlog_sync_period" not in conf


def test_periodic_every_fifty_milliseconds_is_the_default_and_the_period_is_a_setting():
    assert Settings().cassandra_commitlog_sync == "periodic" and Settings().cassandra_commitlog_gate == "auto"
    conf = _config("periodic")
    assert conf["commitlog_sync"] == "periodic" and conf["commitlog_sync_period"] == "50ms"
    assert _config("periodic", cassandra_commitlog_period_ms=10000)["commitlog_sync_period"] == "10000ms"
    with pytest.raises(ValueError, match="TL_CASSANDRA_COMMITLOG_PERIOD_MS must be >= 1"):
        Settings(cassandra_commitlog_period_ms=0)
    with pytest.raises(ValueError, match="TL_CASSANDRA_COMMITLOG_GATE must be auto or off"):
        Settings(cassandra_commitlog_gate="maybe")


def test_group_syncs_at_most_once_per_window_and_still_waits_for_the_disk():
    conf = _config("group", cassandra_commitlog_group_window_ms=3)
    assert conf["commitlog_sync"] == "group" and conf["commitlog_sync_group_window"] == "3ms"
    assert "commitlog_sync_period" not in conf


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="batch, group, periodic"):
        _config("always")


def test_mutation_threads_and_batches_in_flight_are_settings():
    assert _config("batch")["concurrent_writes"] == Settings().cassandra_concurrent_writes == 64
    assert _config("batch", cassandra_concurrent_writes=16)["concurrent_writes"] == 16
    assert Settings().cassandra_batches_in_flight == 32
    for name in ("cassandra_concurrent_writes", "cassandra_batches_in_flight", "cassandra_commitlog_group_window_ms"):
        with pytest.raises(ValueError, match="must be >= 1"):
            Settings(**{name: 0})


def test_memtables_are_tries_in_cassandras_default_space_unless_set_otherwise():
    conf = _config("batch")
    assert Settings().cassandra_memtable == "trie"
    assert conf["memtable"]["configurations"]["default"] == {"inherits": "trie"}
    assert conf["memtable"]["configurations"]["trie"]["class_name"] == "TrieMemtable"
    # no explicit space: Cassandra takes a quarter of the heap on heap and as much off heap
    assert "memtable_heap_space" not in conf and "memtable_offheap_space" not in conf
    assert Cassandra(settings=Settings(), state=Path("/nowhere")).heap == "2g"
    skiplist = _config("batch", cassandra_memtable="skiplist")["memtable"]["configurations"]
    assert skiplist["default"] == {"inherits": "skiplist"} and skiplist["skiplist"]["class_name"] == "SkipListMemtable"
    with pytest.raises(ValueError, match="TL_CASSANDRA_MEMTABLE must be one of trie, skiplist"):
        Settings(cassandra_memtable="btree")


# --- the three-node ring (localenv/cassandra_ring.py) and the client settings both topologies share


def _ring():
    from localenv.cassandra_ring import CassandraRing

    return CassandraRing(Path("/nowhere/ring"), 19442, 19443, settings=Settings())


def test_ring_nodes_gossip_in_dc1_with_node1_as_seed_and_periodic_commitlog():
    ring = _ring()
    assert [node.state for node in ring.nodes] == [Path(f"/nowhere/ring/node{i}") for i in (1, 2, 3)]
    for i, node in enumerate(ring.nodes, start=1):
        conf = yaml.safe_load(node._yaml())
        assert conf["listen_address"] == conf["rpc_address"] == f"127.0.0.{i}"
        assert (conf["native_transport_port"], conf["storage_port"]) == (19442, 19443)
        assert conf["endpoint_snitch"] == "GossipingPropertyFileSnitch"
        assert conf["seed_provider"][0]["parameters"][0]["seeds"] == "127.0.0.1:19443"
        assert (conf["num_tokens"], conf["allocate_tokens_for_local_replication_factor"]) == (4, 3)
        assert conf["commitlog_sync"] == "periodic"
        assert conf["cluster_name"] == "timeline-ring"
        assert f"-Dcassandra-rackdc.properties=file://{node.rackdc}" in node.topology_flags()
        assert node.heap == "512M" and node.agent_port == 19444
    # the single node keeps its own topology
    single = yaml.safe_load(Cassandra(settings=Settings(), state=Path("/nowhere"))._yaml())
    assert (single["endpoint_snitch"], single["num_tokens"], single["cluster_name"]) == ("SimpleSnitch", 16, "timeline-local")
    assert single["seed_provider"][0]["parameters"][0]["seeds"] == "127.0.0.1:7000"


def test_ring_settings_replicate_three_times_in_dc1_at_local_quorum():
    from ops.schema import keyspace_replication

    default = Settings()
    assert keyspace_replication(default) == "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    assert default.cassandra_consistency == "LOCAL_QUORUM"
    ring = _ring().with_servers(default)
    assert ring.cassandra_hosts == ("127.0.0.1", "127.0.0.2", "127.0.0.3") and ring.cassandra_port == 19442
    assert keyspace_replication(ring) == "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"
    assert ring.cassandra_keyspace == default.cassandra_keyspace  # namespaces stay the caller's


def test_consistency_settings_are_checked():
    with pytest.raises(ValueError, match="TL_CASSANDRA_CONSISTENCY"):
        Settings(cassandra_consistency="LOCAL_SERIAL")
    with pytest.raises(ValueError, match="TL_CASSANDRA_REPLICATION_FACTOR"):
        Settings(cassandra_replication_factor=0)


def test_every_cluster_routes_token_aware_in_the_local_dc_at_the_configured_consistency():
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    from ops.schema import cassandra_cluster
    from sinks.cassandra import new_cluster

    ring = _ring().with_servers(Settings())
    for cluster in (new_cluster(ring), cassandra_cluster(ring), cassandra_cluster(Settings(cassandra_consistency="ONE"))):
        try:
            profile = cluster.profile_manager.profiles[EXEC_PROFILE_DEFAULT]
            policy = profile.load_balancing_policy
            assert isinstance(policy, TokenAwarePolicy) and isinstance(policy._child_policy, DCAwareRoundRobinPolicy)
            if cluster.contact_points == list(ring.cassandra_hosts):
                assert policy._child_policy.local_dc == "dc1"
                assert profile.consistency_level == ConsistencyLevel.LOCAL_QUORUM
            else:
                assert policy._child_policy.local_dc is None  # the single node: its contact point's DC
                assert profile.consistency_level == ConsistencyLevel.ONE
        finally:
            cluster.shutdown()


def test_the_cached_row_factory_gives_the_drivers_rows():
    from cassandra.query import named_tuple_factory

    from sinks.cassandra import cached_named_tuple_factory

    for columns, rows in ((["[applied]"], [(True,)]), (["tweet_id", "author_id"], [(3, 4), (1, 2)]),
                          (["a", "a", "1x"], [(1, 2, 3)]), (["x"], [])):
        ours, theirs = cached_named_tuple_factory(columns, rows), named_tuple_factory(columns, rows)
        assert ours == theirs and [r._fields for r in ours] == [r._fields for r in theirs]
    first = cached_named_tuple_factory(["[applied]"], [(True,)])[0]
    assert first.applied is True and type(first) is type(cached_named_tuple_factory(["[applied]"], [(False,)])[0])
