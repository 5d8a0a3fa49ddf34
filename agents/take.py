"""Batches that drain what is buffered, without a timer.

faust-streaming's ``Stream.take_events(max_, within)`` hands a batch over when ``max_``
events are buffered or ``within`` seconds have passed, and that window starts again after
every batch: an event that arrives at an idle agent waits up to ``within`` before anything
moves (50 ms per stage, twice on the way to a timeline), and under load each batch waits
for the window to fill even when the agent could already be working.

``drain_batches`` hands a batch over as soon as at least one event is buffered, after
letting the stream add what it already has in its queue (Faust's stream moves one message
per turn of the event loop: the batch grows while the queue has messages, up to ``max_``;
no clock). While a batch is processed the stream keeps its events queued, so
under load the next batch is everything that arrived meanwhile (up to ``max_``): batches
grow with the load instead of with a timer.

Acks: a batch's events are acked only when the consumer asks for the next batch, i.e.
after its processing returned. A generator closed before that (the worker stopping, a
crash) acks nothing, so nothing unfinished is ever committed (``take_events`` acks in a
``finally``, also when closed mid-batch; see ``agents/shutdown.py``). With a ``gate``
(``sinks/cassandra_sync.CommitLogGate``) a processed batch is acked later, in order, by a
task of the generator once its writes are on disk; the stream goes on meanwhile. If
Cassandra restarted since a batch began, that batch and the later unacked ones are handed
over again (before new events) and acked only after that. Closing the generator stops the
task: what it had not acked is processed again by the next worker.

It uses the same stream hooks as ``take_events`` in faust-streaming 0.15.3
(``add_processor``, ``_enable_passive``, ``current_event``, ``ack``, ``enable_acks``,
``_processors``, ``_active_agens``): re-check them on any faust upgrade.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, AsyncIterator, Callable

from agents.failures import SystemicFault, describe, fatal
from agents.metrics import ACK_WAIT, BATCHES_REDONE

#: Turns of the event loop without a new event (and with the stream's queue empty) that
#: end the linger after the first buffered event (no wall-clock wait).
LINGER_TICKS = 2


def pace_pause(batch_len: int, batch_max: int, elapsed_s: float, pace_s: float) -> float:
    """Seconds to wait after a batch before taking the next one, for a stage that may trade
    latency for fewer, larger batches: none after a full batch (a backlog goes at full speed)
    or with no pace; else what is left of ``pace_s`` since the batch began."""
    if pace_s <= 0 or batch_len >= batch_max:
        return 0.0
    return max(0.0, pace_s - elapsed_s)


def drain_batches(stream: Any, max_: int, *, min_: int = 1, linger_ticks: int = LINGER_TICKS,
                  gate: Any = None, stage: str = "") -> AsyncIterator[list[Any]]:
    """Batches of at most ``max_`` events of ``stream``, each as soon as ``min_`` (one) are
    buffered. (A larger ``min_`` is for tests that need several messages as one batch.)
    ``gate``: acks wait for it (``sinks/cassandra_sync.CommitLogGate``; see the module doc);
    ``stage`` labels its metrics."""
    if not 1 <= min_ <= max_:
        raise ValueError(f"need 1 <= min_ <= max_, got min_={min_}, max_={max_}")
    agen = _drain(stream, max_, min_, linger_ticks, gate, stage)
    tracked = getattr(stream, "_active_agens", None)
    if tracked is not None:  # Stream.on_stop closes it (as it does take_events' generators)
        tracked.add(agen)
    return agen


async def _linger(events: list[Any], max_: int, queue: Any, idle_ticks: int) -> None:
    """Let the stream add what it already holds: Faust's stream takes one message per turn
    of the event loop, so wait turns while its queue has messages (or the last turn added
    one), until ``max_`` are buffered; stop after ``idle_ticks`` turns that added nothing
    with the queue empty. No clock: an idle agent hands a single event over at once."""
    idle = 0
    budget = 4 * max_ + idle_ticks  # a stream that skips messages cannot hold a batch forever
    while len(events) < max_ and idle < idle_ticks and budget > 0:
        before = len(events)
        await asyncio.sleep(0)
        budget -= 1
        if len(events) > before or (queue is not None and not queue.empty()):
            idle = 0
        else:
            idle += 1


class _LateAcks:
    """Acks processed batches once ``gate.settle`` says their writes are on disk; batches whose
    writes a restarted Cassandra may have lost go to ``redo``, for the stream to hand over again."""

    def __init__(self, stream: Any, gate: Any, wake: Callable[[], None], stage: str) -> None:
        self.stream, self.gate, self.wake, self.stage = stream, gate, wake, stage
        self.waited = ACK_WAIT.labels(stage)
        self.redone = BATCHES_REDONE.labels(stage)
        self.pending: deque[tuple[Any, float, list[Any]]] = deque()  # (token, done_at, events)
        self.redo: deque[list[Any]] = deque()
        self.added = asyncio.Event()
        self.task: asyncio.Task | None = None

    def begin(self) -> Any:
        return self.gate.token()

    def add(self, token: Any, batch: list[Any]) -> None:
        self.pending.append((token, time.monotonic(), batch))
        self.added.set()
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                if not self.pending:
                    self.added.clear()
                    await self.added.wait()
                    continue
                token, done_at, batch = self.pending[0]
                if await self.gate.settle(token, done_at):
                    self.pending.popleft()
                    for event in batch:
                        await self.stream.ack(event)
                    self.waited.observe(time.monotonic() - done_at)
                    continue
                # The node restarted after this batch began: process again every batch begun
                # before the restart was seen, in order, before any of them is acked.
                current = self.gate.token()
                again = [p[2] for p in self.pending if p[0] != current]
                self.pending = deque(p for p in self.pending if p[0] == current)
                self.redo.extend(again)
                self.redone.inc(len(again))
                self.stream.log.warning("Cassandra restarted: %d batches (%d events) are processed again",
                                        len(again), sum(len(b) for b in again))
                self.wake()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing more can be acked: stop the worker loudly
            fatal(self.stage, SystemicFault(f"{self.stage}: acks waiting for Cassandra's commit log: {describe(exc)}"))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


async def _drain(stream: Any, max_: int, min_: int, linger_ticks: int,
                 gate: Any, stage: str) -> AsyncIterator[list[Any]]:
    events: list[Any] = []
    ready = asyncio.Event()  # at least min_ events buffered
    room = asyncio.Event()  # the buffer takes events (cleared while full or handed out)
    room.set()

    async def add_to_buffer(value: Any) -> Any:
        try:
            while not room.is_set():
                if (await stream.wait(room)).stopped:
                    return value  # never buffered, never acked: the next worker gets it
            event = stream.current_event
            if event is None:
                raise RuntimeError("drain_batches found current_event is None")
            events.append(event)
            if len(events) >= min_:
                ready.set()
            if len(events) >= max_:
                room.clear()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - as take_events: the stream crashes loudly
            stream.log.exception("Error adding to drain buffer: %r", exc)
            await stream.crash(exc)
        return value

    queue = getattr(stream.channel, "queue", None)  # the stream's inbox (a topic channel's queue)
    enable_acks = stream.enable_acks
    stream.enable_acks = False  # acked here, after processing
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    late = _LateAcks(stream, gate, ready.set, stage) if gate is not None else None
    try:
        while not stream.should_stop:
            if late is not None and late.redo:  # writes a restarted Cassandra may have lost
                batch = late.redo.popleft()
                token = late.begin()
                yield batch
                late.add(token, batch)
                continue
            if len(events) < min_:
                ready.clear()
                if await stream.wait_for_stopped(ready):
                    break
                continue
            await _linger(events, max_, queue, linger_ticks)
            room.clear()
            batch = list(events)
            del events[: len(batch)]
            token = late.begin() if late is not None else None
            yield batch
            # The consumer asked for the next batch: this one is processed.
            if late is not None:
                late.add(token, batch)
            else:
                for event in batch:
                    await stream.ack(event)
            room.set()
    finally:
        if late is not None:
            await late.close()
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
