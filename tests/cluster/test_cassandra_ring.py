"""Three Cassandra nodes (``localenv/cassandra_ring.py``) under the real pipeline.

A ring of three nodes on 127.0.0.1-3 in a private folder (``.state/cring/``) on free ports;
the shared single-node Kafka, Redis and PostgreSQL in a namespace of the test's own. The
keyspace is replicated three times in dc1, every read and write at LOCAL_QUORUM, the
driver token-aware.

* A real worker delivers a seeded workload into the ring, and every home timeline, read
  from Cassandra, equals the reference computed from the events alone.
* Under load (tweets and follows flowing through the worker, direct writes and cold-cache
  reads through the product's store and reader) node 1 (the seed, the first contact point)
  is SIGKILLed: reads and writes go on at quorum (errors counted, the longest gap without a
  successful write or read measured), the node restarts and rejoins, the hints the others
  kept for it are replayed, nothing acknowledged is lost, and every timeline equals the
  reference, even with another node down afterwards (reads need the restarted node then).

The times measured are printed and written to ``.state/cring/measured.json``.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from localenv.cassandra_ring import ADDRESSES, CassandraRing
from localenv.host import STATE, log
from localenv.services import ensure_up
from localenv.worker import Worker
from localenv.workload import generate, produce
from ops.lag import wait_caught_up
from ops.schema import cassandra_cluster
from ops.verify import verify
from policies.reference import reference_home_timelines
from settings import get_settings
from sinks.cassandra import CassandraStore
from sinks.redis_timeline import RedisTimelines
from tests.integration.pipeline_harness import diff_timelines, drop, isolated_settings, provision, reader_for

pytestmark = pytest.mark.cluster

FOLDER = STATE / "cring"
MEASURED: dict[str, object] = {}
SMALL = dict(celebrity_threshold=20, celebrity_hysteresis=5, timeline_cap=60, backfill_limit=25)
PROBE_AUTHOR = 10**15  # far from the workload's users (10**12 + i): not in any timeline


def record(**values: object) -> None:
    MEASURED.update(values)
    log(f"measured: {values}")
    FOLDER.mkdir(parents=True, exist_ok=True)
    (FOLDER / "measured.json").write_text(json.dumps(MEASURED, indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def ring(request):
    ensure_up(get_settings())  # the shared Kafka, Redis and PostgreSQL
    port, internode = CassandraRing.free_ports()
    ring = CassandraRing(FOLDER / f"ring-{os.getpid()}", port, internode)
    began = time.monotonic()
    try:
        ring.up()
        record(ring_up_s=round(time.monotonic() - began, 1))
        yield ring
    finally:
        began = time.monotonic()
        if request.session.testsfailed:
            ring.down()  # the nodes' logs stay in the ring's folder
        else:
            ring.reset()
        record(ring_down_s=round(time.monotonic() - began, 1))


async def empty_home_timelines(settings, users) -> None:
    """Delete the cached home timelines: the next reads go to Cassandra."""
    redis = Redis.from_url(settings.redis_url)
    try:
        timelines = RedisTimelines.from_settings(redis, settings)
        await redis.delete(*(timelines.key(u) for u in users))
    finally:
        await redis.aclose()


async def test_worker_delivers_into_the_ring_at_replication_factor_3(ring, tmp_path):
    settings = ring.with_servers(isolated_settings(tmp_path, **SMALL))
    provision(settings)
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        cluster = cassandra_cluster(settings)
        try:
            session = cluster.connect()
            row = session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                                  (settings.cassandra_keyspace,)).one()
            assert row.replication == {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "dc1": "3"}
            hosts = cluster.metadata.all_hosts()
            assert sorted(h.endpoint.address for h in hosts) == list(ADDRESSES)
            assert {h.datacenter for h in hosts} == {"dc1"}
            replicas = cluster.metadata.get_replicas(settings.cassandra_keyspace, (42).to_bytes(8, "big"))
            assert len(replicas) == 3
        finally:
            cluster.shutdown()
        workload = generate(11, users=150, tweets=1500, celebrity_threshold=20)
        began = time.monotonic()
        half = len(workload.events) // 2
        for events in (workload.events[:half], workload.events[half:]):
            await produce(settings, events, [])
            await wait_caught_up(settings, timeout=600, check=worker.check)
        record(rf3_pipeline_events=len(workload.events), rf3_pipeline_s=round(time.monotonic() - began, 1))
        expected = reference_home_timelines(workload.events)
        assert sum(map(len, expected.values())) > 1000  # not a trivial workload
        async with reader_for(settings) as reader:
            first = await reader.page(sorted(expected)[0], limit=10)
            assert first.source != "cache"  # cold cache: the first read is Cassandra's
            diffs = await diff_timelines(reader, expected, page_size=23)
        assert diffs == {}, f"{len(diffs)} users differ, e.g. {list(diffs.items())[:3]}"
        assert worker.alive(), worker.log_tail()
    finally:
        worker.stop()
        drop(settings)


@dataclass
class Probe:
    """Successes and errors of one kind of request, by completion time (monotonic)."""

    name: str
    ok: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)

    async def run(self, op, stop: asyncio.Event, interval: float) -> None:
        i = 0
        while not stop.is_set():
            began = time.monotonic()
            try:
                await op(i)
                self.ok.append(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - counted: that is the measurement
                self.errors.append((time.monotonic(), f"{type(exc).__name__}: {str(exc)[:160]}"))
            i += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    def longest_gap(self, start: float, end: float) -> tuple[float, float]:
        """(seconds, start offset from ``start``) of the longest time without a success."""
        times = [start, *(t for t in self.ok if start < t < end), end]
        gap, at = max((b - a, a - start) for a, b in zip(times, times[1:]))
        return round(gap, 2), round(at, 2)

    def count(self, start: float, end: float) -> tuple[int, int]:
        return (sum(start <= t < end for t in self.ok), sum(start <= t < end for t, _ in self.errors))


async def produce_paced(settings, events: list[dict], per_second: int) -> None:
    for i in range(0, len(events), per_second):
        began = time.monotonic()
        await produce(settings, events[i:i + per_second], [])
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))


async def test_one_node_killed_under_load_reads_and_writes_go_on_at_quorum(ring, tmp_path):
    settings = ring.with_servers(isolated_settings(tmp_path, **SMALL))
    provision(settings)
    workload = generate(23, users=150, tweets=3000, celebrity_threshold=20)  # 5,835 events
    expected = reference_home_timelines(workload.events)
    users = sorted(expected)
    half = len(workload.events) // 3
    worker = Worker(settings, tmp_path / "worker.log").start()
    store = await asyncio.to_thread(CassandraStore.open, settings)
    acked: list[tuple[int, int]] = []
    try:
        await produce(settings, workload.events[:half], [])  # the graph exists before the load
        await wait_caught_up(settings, timeout=600, check=worker.check)
        writes, reads = Probe("write"), Probe("read")

        async def write(i: int) -> None:
            row = (PROBE_AUTHOR + i % 16, i + 1)
            await store.execute("insert_author_tl", row)
            acked.append(row)

        async with reader_for(settings) as reader:
            async def read(i: int) -> None:
                user = users[i % len(users)]
                await reader.redis.delete(reader.timelines.key(user))
                page = await reader.page(user, limit=20)
                assert page.source != "cache"

            stop = asyncio.Event()
            load_began = time.monotonic()
            tasks = [asyncio.create_task(writes.run(write, stop, 0.05)),
                     asyncio.create_task(reads.run(read, stop, 0.05)),
                     asyncio.create_task(produce_paced(settings, workload.events[half:], 30))]
            await asyncio.sleep(10)
            killed_at = time.monotonic()
            pid = await asyncio.to_thread(ring.kill, 1)
            log(f"node1 (pid {pid}) SIGKILLed {killed_at - load_began:.1f}s into the load")
            await asyncio.sleep(25)  # hints are flushed to files every 10 s
            hints_down = await asyncio.to_thread(ring.pending_hints)
            restart_began = time.monotonic()
            await asyncio.to_thread(ring.start, 1)
            back_at = time.monotonic()
            replayed_at = None
            while time.monotonic() < back_at + 300:
                pending = await asyncio.to_thread(ring.pending_hints)
                if not any(ADDRESSES[0] in per for per in pending.values()):
                    replayed_at = time.monotonic()
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(10)
            await tasks[2]  # every event produced
            stop.set()
            await asyncio.gather(*tasks[:2])
            load_ended = time.monotonic()
        retries = [line for line in (tmp_path / "worker.log").read_text(errors="replace").splitlines()
                   if "store_retry" in line]
        down = (killed_at, back_at)
        record(
            failover_node_killed="node1 (seed, first contact point)",
            failover_load_s=round(load_ended - load_began, 1),
            failover_node_down_s=round(back_at - killed_at, 1),
            failover_restart_s=round(back_at - restart_began, 1),
            failover_hints_while_down=hints_down,
            failover_hints_replayed_s=None if replayed_at is None else round(replayed_at - back_at, 1),
            failover_writes_ok_errors=writes.count(load_began, load_ended),
            failover_writes_ok_errors_while_down=writes.count(*down),
            failover_write_longest_gap_s_at=writes.longest_gap(load_began, load_ended),
            failover_reads_ok_errors=reads.count(load_began, load_ended),
            failover_reads_ok_errors_while_down=reads.count(*down),
            failover_read_longest_gap_s_at=reads.longest_gap(load_began, load_ended),
            failover_first_errors=[e for _, e in (writes.errors + reads.errors)[:5]],
            failover_killed_at_s=round(killed_at - load_began, 1),
            failover_back_at_s=round(back_at - load_began, 1),
            failover_worker_store_retries=len(retries),
            failover_worker_first_retries=[line[-300:] for line in retries[:3]],
        )
        assert any(ADDRESSES[0] in per for per in hints_down.values()), f"no hints kept for node1: {hints_down}"
        assert replayed_at is not None, "the hints for node1 were not replayed within 300 s"
        # Quorum goes on with one node down: most requests succeed while it is down, and
        # no gap without a success is anywhere near the outage.
        for probe in (writes, reads):
            ok, errors = probe.count(*down)
            assert ok > 10 * max(errors, 1), f"{probe.name}s while node1 was down: {ok} ok, {errors} errors"
            gap, _ = probe.longest_gap(load_began, load_ended)
            assert gap < 15, f"{probe.name}s stopped for {gap}s"
        await wait_caught_up(settings, timeout=600, check=worker.check)
        assert worker.alive(), worker.log_tail()
        # Nothing acknowledged is lost: every probe write, and every timeline (from Cassandra).
        rows = await store.query_many("author_tl_below", [(PROBE_AUTHOR + k, 2**62, 100_000) for k in range(16)])
        stored = {(PROBE_AUTHOR + k, r.tweet_id) for k, part in enumerate(rows) for r in part}
        assert not set(acked) - stored, f"{len(set(acked) - stored)} acknowledged writes lost"
        for down_node in (None, 2):  # then with node 2 down: quorum needs the restarted node1
            if down_node is not None:
                await asyncio.to_thread(ring.kill, down_node)
            await empty_home_timelines(settings, users)
            report = await verify(settings, page_size=37)
            assert report.users >= 140 and report.entries > 1000, report
            assert report.ok, f"node{down_node} down: {len(report.diffs)} users differ: {list(report.diffs.items())[:3]}"
        async with reader_for(settings) as reader:
            assert await diff_timelines(reader, expected, page_size=50) == {}
    finally:
        worker.stop()
        await asyncio.to_thread(store.close)
        drop(settings)  # with node 2 down: two of three nodes agree on the schema
