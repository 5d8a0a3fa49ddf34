"""``agents/take.drain_batches``: a batch as soon as an event is buffered (no timer),
batches that grow with what arrives while one is processed, acks only after processing."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents.metrics import BATCHES_REDONE
from agents.take import drain_batches, pace_pause
from tests.unit.agent_doubles import app  # the unit tests' Faust app (own app id, no broker)

batches: list[list[Any]] = []
acked_when_handed_over: list[list[bool]] = []
gate = asyncio.Event()


@app.agent()
async def drainer(stream: Any) -> None:
    async for batch in drain_batches(stream, 4):
        acked_when_handed_over.append([e.message.acked for e in batch])
        batches.append([e.value for e in batch])
        await gate.wait()


@app.agent()
async def wide_drainer(stream: Any) -> None:
    async for batch in drain_batches(stream, 100):
        batches.append([e.value for e in batch])
        await gate.wait()


class Gate:
    """A commit-log gate (sinks/cassandra_sync.CommitLogGate's interface) under the test's control."""

    def __init__(self) -> None:
        self.gen = 1
        self.settled: list[tuple[int, float]] = []
        self.durable = asyncio.Event()  # the commit log reached the disk

    def token(self) -> int:
        return self.gen

    async def settle(self, token: int, done_at: float) -> bool:
        self.settled.append((token, done_at))
        await self.durable.wait()
        return token == self.gen


late_gate = Gate()
handed: list[Any] = []  # events handed over by late_drainer


@app.agent()
async def late_drainer(stream: Any) -> None:
    async for batch in drain_batches(stream, 4, gate=late_gate):
        handed.extend(batch)
        batches.append([e.value for e in batch])


writes: dict[int, asyncio.Future] = {}  # first value of a batch -> its writes (overlap_drainer)
redone: list[list[Any]] = []  # batches handed over again, as the consumer saw them


@app.agent()
async def overlap_drainer(stream: Any) -> None:
    """A consumer whose writes go on after it asked for the next batch (``Batch.done``);
    a redone batch is processed to the end (no ``done``)."""
    async for batch in drain_batches(stream, 4, overlap=True):
        handed.extend(batch)
        values = [e.value for e in batch]
        batches.append(values)
        if batch.redo:
            redone.append(values)
            continue
        batch.done = writes[values[0]] = asyncio.get_running_loop().create_future()


@app.agent()
async def gated_overlap_drainer(stream: Any) -> None:
    async for batch in drain_batches(stream, 4, gate=late_gate, overlap=True):
        handed.extend(batch)
        values = [e.value for e in batch]
        batches.append(values)
        batch.done = writes[values[0]] = asyncio.get_running_loop().create_future()


async def ticks(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def fresh(faust_test_app: Any) -> None:
    batches.clear()
    acked_when_handed_over.clear()
    gate.clear()
    late_gate.__init__()
    handed.clear()
    writes.clear()
    redone.clear()


async def test_one_event_is_handed_over_without_waiting_for_a_timer() -> None:
    gate.set()
    async with drainer.test_context() as tc:
        await tc.put(1, wait=False)
        await ticks()  # turns of the event loop, no clock: a timer window would still be open
        assert batches == [[1]]


async def test_what_arrives_during_a_batch_is_the_next_batch_up_to_max() -> None:
    async with drainer.test_context() as tc:
        await tc.put(1, wait=False)
        await ticks()
        assert batches == [[1]]
        for value in range(2, 8):
            await tc.put(value, wait=False)
        await ticks()
        assert batches == [[1]], "nothing is handed over while a batch is processed"
        gate.set()
        await ticks(60)
        assert batches == [[1], [2, 3, 4, 5], [6, 7]]


async def test_everything_queued_meanwhile_is_one_batch_though_the_stream_moves_one_per_turn() -> None:
    async with wide_drainer.test_context() as tc:
        await tc.put(0, wait=False)
        await ticks()
        for value in range(1, 61):
            await tc.put(value, wait=False)
        gate.set()
        await ticks(400)
        assert batches == [[0], list(range(1, 61))]


async def test_a_batch_is_acked_only_after_its_processing_returned() -> None:
    async with drainer.test_context() as tc:
        await tc.put(1, wait=False)
        await ticks()
        assert acked_when_handed_over == [[False]]
        await tc.put(2, wait=False)
        gate.set()
        await ticks(60)
        assert batches == [[1], [2]]
        assert acked_when_handed_over == [[False], [False]]


async def test_with_a_gate_the_stream_goes_on_and_acks_wait_for_the_disk_in_order() -> None:
    async with late_drainer.test_context() as tc:
        for value in range(1, 4):
            await tc.put(value, wait=False)
            await ticks()
        assert batches == [[1], [2], [3]], "processing does not wait for the commit log"
        await ticks(20)
        assert late_gate.settled and all(not e.message.acked for e in handed), "nothing acked before the disk"
        late_gate.durable.set()
        await ticks(40)
        assert [e.message.acked for e in handed] == [True, True, True]
        times = [done_at for _, done_at in late_gate.settled]
        assert times == sorted(times)


async def test_batches_begun_before_a_cassandra_restart_are_processed_again_before_any_ack() -> None:
    redone = BATCHES_REDONE.labels("")
    before = redone._value.get()
    async with late_drainer.test_context() as tc:
        for value in (1, 2):
            await tc.put(value, wait=False)
            await ticks()
        assert batches == [[1], [2]]
        late_gate.gen = 2  # the node restarted: what it acknowledged for batches 1 and 2 may be lost
        late_gate.durable.set()
        await ticks(60)
        assert batches == [[1], [2], [1], [2]], "both handed over again, in order"
        await tc.put(3, wait=False)
        await ticks(40)
        assert batches == [[1], [2], [1], [2], [3]]
        assert all(e.message.acked for e in handed)
        assert [token for token, _ in late_gate.settled][-3:] == [2, 2, 2]
        assert redone._value.get() - before == 2


async def test_with_overlap_the_next_batch_comes_at_once_and_acks_wait_for_the_writes_in_order() -> None:
    async with overlap_drainer.test_context() as tc:
        for value in range(1, 4):
            await tc.put(value, wait=False)
            await ticks()
        assert batches == [[1], [2], [3]], "the next batch while the writes go on"
        writes[2].set_result(None)
        await ticks(40)
        assert [e.message.acked for e in handed] == [False, False, False], "2 is written, but 1 is not yet"
        writes[1].set_result(None)
        await ticks(40)
        assert [e.message.acked for e in handed] == [True, True, False]
        writes[3].set_result(None)
        await ticks(40)
        assert [e.message.acked for e in handed] == [True, True, True]


async def test_failed_writes_hand_that_batch_and_every_later_one_over_again_once_all_writes_stopped() -> None:
    counter = BATCHES_REDONE.labels("")
    before = counter._value.get()
    async with overlap_drainer.test_context() as tc:
        for value in range(1, 4):
            await tc.put(value, wait=False)
            await ticks()
        writes[1].set_result(None)
        writes[2].set_exception(RuntimeError("a store refused a row"))
        await ticks(40)
        assert batches == [[1], [2], [3]], "not before 3's writes stopped: a replay must not race them"
        assert handed[0].message.acked and not handed[1].message.acked
        writes[3].set_exception(RuntimeError("the previous batch's writes failed"))
        await ticks(60)
        assert redone == [[2], [3]], "in order, processed to the end"
        assert batches == [[1], [2], [3], [2], [3]]
        await tc.put(4, wait=False)
        await ticks(40)
        assert batches[-1] == [4] and not writes[4].done()
        assert [e.value for e in handed if e.message.acked] == [1, 2, 3, 2, 3]
        assert counter._value.get() - before == 2
        writes[4].set_result(None)
        await ticks(40)
        assert all(e.message.acked for e in handed)


async def test_the_gate_proves_a_batch_written_at_the_moment_its_writes_completed() -> None:
    """Not at the later moment the acks got to it: batches written while an earlier one waited
    for the disk are covered by the same proof, not proven one after the other."""
    async with gated_overlap_drainer.test_context() as tc:
        for value in (1, 2):
            await tc.put(value, wait=False)
            await ticks()
        writes[1].set_result(None)
        writes[2].set_result(None)
        await ticks(20)
        written = time.monotonic()
        await asyncio.sleep(0.02)
        late_gate.durable.set()
        await ticks(60)
        assert [e.message.acked for e in handed] == [True, True]
        assert [done_at < written for _, done_at in late_gate.settled] == [True, True]


def test_bounds() -> None:
    with pytest.raises(ValueError):
        drain_batches(object(), 0)
    with pytest.raises(ValueError):
        drain_batches(object(), 4, min_=5)


def test_pace_pause_waits_out_the_pace_unless_a_full_batch_or_no_pace() -> None:
    assert pace_pause(3, 1000, 0.05, 0.25) == pytest.approx(0.2)  # what is left of the pace
    assert pace_pause(3, 1000, 0.30, 0.25) == 0.0  # the batch took longer than the pace
    assert pace_pause(1000, 1000, 0.01, 0.25) == 0.0  # a full batch: a backlog goes at full speed
    assert pace_pause(3, 1000, 0.01, 0.0) == 0.0  # no pace (the timeline stages)


def test_paces_are_settings_of_each_stage_none_for_the_timeline_stages_by_default() -> None:
    from settings import Settings

    s = Settings()
    assert (s.projection_pace_ms, s.fanout_pace_ms, s.deliver_pace_ms) == (250, 0, 0)
    for name in ("projection_pace_ms", "fanout_pace_ms", "deliver_pace_ms"):
        with pytest.raises(ValueError, match="must be >= 0"):
            Settings(**{name: -1})
