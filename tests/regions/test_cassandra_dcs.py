"""One Cassandra cluster, two data centers (``CassandraRing(nodes=...)``), one node each:
dc1 on 127.0.21.1, dc2 on 127.0.22.1, private folder ``.state/rstores/``, the project's
schema (``ops.schema.apply_cassandra``) at {'dc1': 1, 'dc2': 1}, every client through the
product's driver config (``sinks.cassandra.new_cluster``) at LOCAL_QUORUM in its own DC.

* A write acknowledged in dc1 is read in dc2 (delay from the write's start and from its
  acknowledgement to the first read that sees it, p50/p99 over 300 writes).
* dc1's node SIGKILLed: dc2 goes on reading and writing (no errors); dc1's clients fail.
* dc1's node restarted: the writes dc2 took meanwhile reach it (hints; a LOCAL_QUORUM read
  in dc1 asks dc1's node only, so nothing else can have put them there).

Measurements are printed and written to ``.state/rstores/cassandra_measured.json``.
"""
from __future__ import annotations

import os
import time

import pytest
from cassandra import ConsistencyLevel

from localenv.cassandra_ring import CassandraRing
from localenv.host import STATE
from ops.schema import apply_cassandra, cassandra_cluster
from settings import Settings
from tests.regions.measure import Measured, pct

pytestmark = pytest.mark.regions

FOLDER = STATE / "rstores"
NODES = (("127.0.21.1", "dc1"), ("127.0.22.1", "dc2"))
record = Measured(FOLDER / "cassandra_measured.json").record


@pytest.fixture(scope="module")
def ring(request):
    addresses = tuple(a for a, _ in NODES)
    port, internode = CassandraRing.free_ports(start=19600, addresses=addresses)
    base = Settings().isolated("rstores", f"dcs{os.getpid()}", FOLDER / "work")
    ring = CassandraRing(FOLDER / f"dcs-{os.getpid()}", port, internode, settings=base, nodes=NODES)
    began = time.monotonic()
    try:
        ring.up()
        record(ring_up_s=round(time.monotonic() - began, 1))
        apply_cassandra(ring.settings_for("dc1", base))
        yield ring
    finally:
        if request.session.testsfailed:
            ring.down()  # the nodes' logs stay in the ring's folder
        else:
            ring.reset()


class Region:
    """A driver session in one DC, as the product builds it, with the statements the tests use."""

    def __init__(self, ring: CassandraRing, dc: str) -> None:
        self.settings = ring.settings_for(dc, ring.settings)
        self.cluster = cassandra_cluster(self.settings, connect_timeout=5.0)
        self.session = self.cluster.connect()
        ks = self.settings.cassandra_keyspace
        self.insert = self.session.prepare(f"INSERT INTO {ks}.tweets (tweet_id, author_id, text, created_at) "
                                           "VALUES (?, ?, ?, ?)")
        self.select = self.session.prepare(f"SELECT tweet_id FROM {ks}.tweets WHERE tweet_id = ?")

    def write(self, tweet_id: int) -> None:
        self.session.execute(self.insert, (tweet_id, 1, f"t{tweet_id}", tweet_id), timeout=10)

    def has(self, tweet_id: int) -> bool:
        return self.session.execute(self.select, (tweet_id,), timeout=10).one() is not None

    def close(self) -> None:
        self.cluster.shutdown()


@pytest.fixture
def regions(ring):
    a, b = Region(ring, "dc1"), Region(ring, "dc2")
    yield a, b
    a.close()
    b.close()


def test_keyspace_spans_both_dcs_and_each_driver_stays_in_its_own(ring, regions):
    a, b = regions
    row = a.session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                            (a.settings.cassandra_keyspace,)).one()
    assert row.replication == {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy",
                               "dc1": "1", "dc2": "1"}
    for region, own in ((a, "127.0.21.1"), (b, "127.0.22.1")):
        hosts = {h.endpoint.address: h.datacenter for h in region.cluster.metadata.all_hosts()}
        assert hosts == {"127.0.21.1": "dc1", "127.0.22.1": "dc2"}
        pooled = [h.endpoint.address for h in region.session.get_pool_state()]
        assert pooled == [own], f"the {region.settings.cassandra_local_dc} driver holds connections to {pooled}"
        assert region.session.default_consistency_level == ConsistencyLevel.LOCAL_QUORUM or \
            region.cluster.profile_manager.default.consistency_level == ConsistencyLevel.LOCAL_QUORUM
        replicas = region.cluster.metadata.get_replicas(region.settings.cassandra_keyspace, (7).to_bytes(8, "big"))
        assert sorted(h.datacenter for h in replicas) == ["dc1", "dc2"]


def test_a_write_in_dc1_is_read_in_dc2(regions):
    a, b = regions
    from_start, from_ack, polls = [], [], 0
    for i in range(300):
        tweet_id = 10**9 + i
        began = time.monotonic()
        a.write(tweet_id)
        acked = time.monotonic()
        while not b.has(tweet_id):
            polls += 1
            assert time.monotonic() - acked < 10, f"tweet {tweet_id} not in dc2 10 s after dc1 acknowledged it"
        seen = time.monotonic()
        from_start.append(seen - began)
        from_ack.append(seen - acked)
    record(dc1_to_dc2_writes=300, dc1_to_dc2_from_write_p50_ms=pct(from_start, 50),
           dc1_to_dc2_from_write_p99_ms=pct(from_start, 99), dc1_to_dc2_after_ack_p50_ms=pct(from_ack, 50),
           dc1_to_dc2_after_ack_p99_ms=pct(from_ack, 99), dc1_to_dc2_reads_that_missed=polls)


def test_dc2_serves_while_dc1_is_down_and_dc1_gets_dc2s_writes_back(ring, regions):
    a, b = regions
    killed = time.monotonic()
    ring.kill(1)
    written, errors = [], []
    deadline = killed + 25  # long enough for the hints to be flushed to files (every 10 s)
    i = 0
    while time.monotonic() < deadline:
        tweet_id = 2 * 10**9 + i
        try:
            b.write(tweet_id)
            written.append(tweet_id)
            assert b.has(tweet_id)
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted: that is the measurement
            errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
        i += 1
        time.sleep(0.02)
    with pytest.raises(Exception):
        a.write(3 * 10**9)  # dc1's clients have no node: the kill is real
    hints = ring.pending_hints()
    record(dc1_down_dc2_writes_ok=len(written), dc1_down_dc2_errors=len(errors), dc1_down_first_errors=errors[:3],
           dc1_down_hints=hints)
    assert not errors, errors[:3]
    assert len(written) > 100
    assert "127.0.21.1" in hints.get("127.0.22.1", {}), f"dc2 keeps no hints for dc1: {hints}"
    began = time.monotonic()
    ring.start(1)
    back = time.monotonic()
    missing = set(written)
    while missing and time.monotonic() < back + 180:
        try:
            missing = {t for t in missing if not a.has(t)}
        except Exception:  # noqa: BLE001 - dc1's driver reconnecting
            pass
        time.sleep(0.5)
    record(dc1_restart_s=round(back - began, 1), dc1_caught_up_s=round(time.monotonic() - back, 1),
           dc1_missing_after_wait=len(missing))
    assert not missing, f"{len(missing)} of dc2's {len(written)} writes never reached dc1"
