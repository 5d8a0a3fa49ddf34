"""The commit-log gate (sinks/cassandra_sync.py): what proves a write on disk, when it probes."""
import asyncio

import pytest
from cassandra import InvalidRequest

from agents.failures import backoff_retry
from policies.failures import SystemicFault

from sinks import cassandra_sync
from sinks.cassandra_sync import CommitLogGate, gate_lag_s, needs_gate, parse_duration_s, sync_lag_s


def test_durations_as_the_settings_view_shows_them():
    assert parse_duration_s("75ms") == pytest.approx(0.075)
    assert parse_duration_s("10s") == 10.0
    assert parse_duration_s("10000") == 10.0  # a bare number is milliseconds
    assert parse_duration_s(None) is None and parse_duration_s("null") is None
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s("soon")


def test_only_periodic_needs_a_lag_and_it_defaults_to_one_and_a_half_periods():
    assert sync_lag_s({"commitlog_sync": "batch"}) is None
    assert sync_lag_s({"commitlog_sync": "group", "commitlog_sync_period": None}) is None
    assert sync_lag_s({"commitlog_sync": "periodic", "commitlog_sync_period": "50ms",
                       "periodic_commitlog_sync_lag_block": None}) == pytest.approx(0.075)
    assert sync_lag_s({"commitlog_sync": "PERIODIC", "commitlog_sync_period": "50ms",
                       "periodic_commitlog_sync_lag_block": "200ms"}) == pytest.approx(0.2)
    # What the worker cannot read stops it as a configuration fault (exit 78), never a guess.
    with pytest.raises(SystemicFault, match="commitlog_sync_period"):
        sync_lag_s({"commitlog_sync": "periodic"})
    with pytest.raises(SystemicFault, match="not a duration"):
        sync_lag_s({"commitlog_sync": "periodic", "commitlog_sync_period": "often"})
    assert gate_lag_s(0.075) > 0.075


def test_the_gate_is_for_one_copy_on_one_node_and_refuses_one_copy_on_many():
    assert not needs_gate(None, 1, 1)  # batch: on disk before the acknowledgement
    assert needs_gate(0.075, 1, 1)
    assert not needs_gate(0.075, 3, 3)  # QUORUM writes to replicas
    with pytest.raises(SystemicFault, match="replication factor of at least 2"):
        needs_gate(0.075, 3, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Node:
    """The generation the node shows (a new one at each start) and how often it was read."""

    def __init__(self) -> None:
        self.gen, self.reads = 7, 0

    async def generation(self) -> int:
        self.reads += 1
        return self.gen


def gate_for(node: Node, probe, lag_s: float, **kw) -> CommitLogGate:
    return CommitLogGate(lag_s=lag_s, probe=probe, generation=node.generation, gen=node.gen, **kw)


def test_a_write_proves_what_was_acknowledged_a_lag_before_it_was_sent():
    clock = Clock()
    gate = gate_for(Node(), lambda: asyncio.sleep(0), 0.1, clock=clock)
    done_at = clock()  # a batch's writes were acknowledged by now
    assert not gate.durable(done_at)
    gate.succeeded(done_at + 0.05)  # sent too soon after: proves only what was before done_at - 0.05
    assert not gate.durable(done_at)
    gate.succeeded(done_at + 0.1)
    assert gate.durable(done_at)
    gate.succeeded(done_at)  # an older proof never moves it back
    assert gate.durable(done_at)


async def test_settle_probes_when_nothing_else_writes_and_shares_a_probe():
    sent: list[float] = []

    async def probe() -> None:
        sent.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.01)

    node = Node()
    gate = gate_for(node, probe, 0.03)
    began = gate.sent()
    token = gate.token()
    answers = await asyncio.gather(gate.settle(token, began), gate.settle(token, began - 0.001),
                                   gate.settle(token, began - 0.002))
    assert answers == [True, True, True]
    assert gate.durable(began) and gate.probes == 1 and len(sent) == 1
    assert node.reads == 1, "one generation read, sent after the proof, confirms all three"
    assert gate.sent() - began >= 0.03  # no proof can come before the lag
    reads = node.reads
    assert await gate.settle(token, began - 0.003) and node.reads == reads, "confirmed already: no read"


async def test_settle_needs_no_probe_when_the_stages_own_writes_prove_it(monkeypatch):
    monkeypatch.setattr(cassandra_sync, "PROBE_GRACE", 3.0)  # 90 ms of grace: room for a busy machine

    async def probe() -> None:
        raise AssertionError("no probe expected")

    gate = gate_for(Node(), probe, 0.03)
    done_at = gate.sent()

    async def writes() -> None:  # the stage keeps writing: every write acknowledged after 5 ms
        while not gate.durable(done_at):
            sent = gate.sent()
            await asyncio.sleep(0.005)
            gate.succeeded(sent)

    answer, _ = await asyncio.gather(gate.settle(gate.token(), done_at), writes())
    assert answer and gate.probes == 0


async def test_settle_retries_a_failing_probe_and_never_returns_before_a_proof():
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("Cassandra away")

    gate = gate_for(Node(), probe, 0.01, retry=backoff_retry)  # the worker's: agents.sinks.with_retry
    done_at = gate.sent()
    assert await gate.settle(gate.token(), done_at)
    assert calls == 3 and gate.durable(done_at)


async def test_an_error_retrying_cannot_fix_is_raised():
    async def probe() -> None:
        raise InvalidRequest("unconfigured table commitlog_probe")

    gate = gate_for(Node(), probe, 0.01, retry=backoff_retry)
    with pytest.raises(InvalidRequest):
        await gate.settle(gate.token(), gate.sent())


async def test_a_write_to_a_restarted_node_proves_nothing_about_the_killed_one():
    node = Node()
    gate = gate_for(node, lambda: asyncio.sleep(0), 0.01)
    token = gate.token()
    done_at = gate.sent()  # a batch's writes acknowledged by the node of generation 7
    node.gen = 8  # killed and started again: what generation 7 had not synced is gone
    await asyncio.sleep(0.012)
    gate.succeeded(gate.sent())  # a write to the new node
    assert gate.durable(done_at), "by time alone it would look proven"
    assert await gate.settle(token, done_at) is False
    assert gate.token() == 8 and gate.restarts == 1 and not gate.durable(done_at)
    later = gate.sent()  # a batch begun after the restart was seen is proven as usual
    assert await gate.settle(gate.token(), later) is True
    assert await gate.settle(token, done_at) is False, "an old token never becomes good"


async def test_a_generation_read_sent_before_a_proof_confirms_nothing_after_it():
    class HeldNode(Node):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def generation(self) -> int:
            self.reads += 1
            await self.release.wait()
            return self.gen

    clock, node = Clock(), HeldNode()
    gate = gate_for(node, lambda: asyncio.sleep(0), 0.01, clock=clock)
    first = clock()
    gate.succeeded(first + 0.011)  # proves what was acknowledged before first + 0.001
    a = asyncio.ensure_future(gate.settle(gate.token(), first))
    for _ in range(3):
        await asyncio.sleep(0)
    assert node.reads == 1  # a's read is in flight, sent when first + 0.001 was proven
    second = first + 0.002
    gate.succeeded(first + 0.013)  # now second is proven too, but after a's read was sent
    b = asyncio.ensure_future(gate.settle(gate.token(), second))
    c = asyncio.ensure_future(gate.settle(gate.token(), first - 0.001))  # covered by a's read
    for _ in range(3):
        await asyncio.sleep(0)
    assert node.reads == 2, "b sends a read of its own; c shares a's"
    node.release.set()
    assert await asyncio.gather(a, b, c) == [True, True, True]
