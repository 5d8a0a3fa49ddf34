"""Replicas per Cassandra data center (TL_CASSANDRA_REPLICATION) and the two-DC ring's config."""
from pathlib import Path

import pytest
import yaml

from ops.schema import keyspace_replication
from policies.dc_replication import format_dc_factors, network_topology, parse_dc_factors
from settings import Settings


def test_parse_lists_each_dc_with_its_factor_in_order():
    assert parse_dc_factors("dc1:1,dc2:1") == {"dc1": 1, "dc2": 1}
    assert list(parse_dc_factors(" dc2 : 3 , dc1:2, ")) == ["dc2", "dc1"]
    assert parse_dc_factors("") == {} and parse_dc_factors(" , ") == {}
    assert format_dc_factors(parse_dc_factors("eu-west:3,us_east:2")) == "eu-west:3,us_east:2"


@pytest.mark.parametrize("raw", ["dc1", "dc1:", ":1", "dc1:0", "dc1:-1", "dc1:x", "dc1:1,dc1:2", "d c:1", "dc'1:1"])
def test_parse_refuses_what_is_not_dc_colon_factor(raw):
    with pytest.raises(ValueError):
        parse_dc_factors(raw)


def test_settings_refuse_a_bad_replication_with_the_variable_name():
    with pytest.raises(ValueError, match="TL_CASSANDRA_REPLICATION"):
        Settings(cassandra_replication="dc1:0")
    with pytest.raises(ValueError, match="TL_CASSANDRA_REPLICATION: .*dc1"):
        Settings.from_env({"TL_CASSANDRA_REPLICATION": "dc1"})
    assert Settings.from_env({"TL_CASSANDRA_REPLICATION": "dc1:1,dc2:1"}).cassandra_replication == "dc1:1,dc2:1"


def test_keyspace_replication_uses_the_per_dc_factors_when_set_and_todays_map_otherwise():
    assert network_topology({"dc1": 1, "dc2": 1}) == "{'class': 'NetworkTopologyStrategy', 'dc1': 1, 'dc2': 1}"
    two = Settings(cassandra_replication="dc1:1,dc2:1", cassandra_local_dc="dc2", cassandra_replication_factor=3)
    assert keyspace_replication(two) == "{'class': 'NetworkTopologyStrategy', 'dc1': 1, 'dc2': 1}"
    assert keyspace_replication(Settings()) == "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    ring = Settings(cassandra_local_dc="dc1", cassandra_replication_factor=3)
    assert keyspace_replication(ring) == "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"
    with pytest.raises(ValueError):
        network_topology({})


def _two_dcs():
    from localenv.cassandra_ring import CassandraRing

    return CassandraRing(Path("/nowhere/two"), 19452, 19453, settings=Settings(),
                         nodes=(("127.0.21.1", "dc1"), ("127.0.22.1", "dc2")))


def test_two_dc_ring_nodes_bind_their_own_address_each_a_seed_of_its_dc(monkeypatch):
    monkeypatch.setattr("localenv.cassandra_server.find_jar", lambda lib, prefix: Path(f"/jars/{prefix}.jar"))
    monkeypatch.setattr("localenv.jmx_exporter.agent_jar", lambda: Path("/jars/agent.jar"))
    ring = _two_dcs()
    assert ring.dcs == ("dc1", "dc2") and ring.factors == {"dc1": 1, "dc2": 1}
    for node, (address, dc) in zip(ring.nodes, (("127.0.21.1", "dc1"), ("127.0.22.1", "dc2"))):
        conf = yaml.safe_load(node._yaml())
        assert conf["listen_address"] == conf["rpc_address"] == address
        assert (conf["native_transport_port"], conf["storage_port"]) == (19452, 19453)
        assert conf["seed_provider"][0]["parameters"][0]["seeds"] == "127.0.21.1:19453,127.0.22.1:19453"
        assert conf["allocate_tokens_for_local_replication_factor"] == 1
        assert node.dc == dc and node.settings.cassandra_local_dc == dc
        command = node.command()
        assert f"-javaagent:/jars/agent.jar={address}:19454:{node.home}/conf/jmx-exporter.yml" in command
        # no JMX port at all: neither Cassandra's (cassandra.jmx.*.port) nor the JVM's own
        assert not [flag for flag in command if "cassandra.jmx" in flag or "jmxremote" in flag]


def test_two_dc_ring_gives_each_region_its_own_node_and_local_dc():
    ring = _two_dcs()
    base = Settings()
    a, b = ring.settings_for("dc1", base), ring.settings_for("dc2", base)
    assert ring.with_servers(base) == a
    assert (a.cassandra_hosts, a.cassandra_local_dc) == (("127.0.21.1",), "dc1")
    assert (b.cassandra_hosts, b.cassandra_local_dc) == (("127.0.22.1",), "dc2")
    for s in (a, b):
        assert s.cassandra_port == 19452 and s.cassandra_consistency == "LOCAL_QUORUM"
        assert keyspace_replication(s) == "{'class': 'NetworkTopologyStrategy', 'dc1': 1, 'dc2': 1}"
    with pytest.raises(ValueError, match="dc3"):
        ring.settings_for("dc3", base)


def test_default_ring_keeps_three_nodes_in_dc1_without_a_per_dc_setting():
    from localenv.cassandra_ring import CassandraRing

    ring = CassandraRing(Path("/nowhere/ring"), 19442, 19443, settings=Settings())
    s = ring.with_servers(Settings())
    assert (s.cassandra_hosts, s.cassandra_local_dc, s.cassandra_replication) == (
        ("127.0.0.1", "127.0.0.2", "127.0.0.3"), "dc1", "")
    assert [node.seeds for node in ring.nodes] == ["127.0.0.1:19443"] * 3


def test_the_driver_stays_in_the_local_dc():
    from cassandra.cluster import EXEC_PROFILE_DEFAULT
    from cassandra.policies import HostDistance

    from sinks.cassandra import new_cluster

    cluster = new_cluster(_two_dcs().settings_for("dc2", Settings()))
    try:
        policy = cluster.profile_manager.profiles[EXEC_PROFILE_DEFAULT].load_balancing_policy._child_policy
        assert policy.local_dc == "dc2" and policy.used_hosts_per_remote_dc == 0  # no remote DC host is ever used
        assert policy.distance(type("H", (), {"datacenter": "dc1", "rack": "r"})()) == HostDistance.IGNORED
    finally:
        cluster.shutdown()
