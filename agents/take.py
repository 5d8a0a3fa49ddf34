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

Writes in the background (``overlap``): a consumer may set ``batch.done`` (a future) before
asking for the next batch: the batch's writes go on while the next batch is processed, and
its acks wait for ``done`` (then for the gate, if any), in order. A batch whose ``done``
failed is handed over again with every later unacked batch, in order, once all their
writes have stopped, marked ``redo``: the consumer processes a redone batch to the end
before asking for the next (``agents/loop.consume``), so an error that a store raises for
one event is isolated as it would be without the overlap.

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


class Batch(list):
    """A batch of events (a list) as ``drain_batches`` hands it over. ``done``: set by a
    consumer whose writes of the batch go on after it asked for the next batch (a future;
    the acks wait for it); ``redo``: handed over again after its writes (or an earlier
    batch's) failed, to be processed to the end before the next batch."""

    done: "asyncio.Future[Any] | None" = None
    redo: bool = False


def drain_batches(stream: Any, max_: int, *, min_: int = 1, linger_ticks: int = LINGER_TICKS,
                  gate: Any = None, stage: str = "", overlap: bool = False) -> AsyncIterator[Batch]:
    """Batches of at most ``max_`` events of ``stream``, each as soon as ``min_`` (one) are
    buffered. (A larger ``min_`` is for tests that need several messages as one batch.)
    ``gate``: acks wait for it (``sinks/cassandra_sync.CommitLogGate``; see the module doc);
    ``overlap``: the consumer may set ``Batch.done`` (see the module doc);
    ``stage`` labels its metrics."""
    if not 1 <= min_ <= max_:
        raise ValueError(f"need 1 <= min_ <= max_, got min_={min_}, max_={max_}")
    agen = _drain(stream, max_, min_, linger_ticks, gate, stage, overlap)
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
    """Acks batches once their writes are done (``Batch.done``, when the consumer set it) and
    ``gate.settle`` says they are on disk (when there is a gate); batches whose writes failed,
    or that a restarted Cassandra may have lost, go to ``redo``, for the stream to hand over
    again."""

    def __init__(self, stream: Any, gate: Any, wake: Callable[[], None], stage: str) -> None:
        self.stream, self.gate, self.wake, self.stage = stream, gate, wake, stage
        self.waited = ACK_WAIT.labels(stage)
        self.redone = BATCHES_REDONE.labels(stage)
        # [token, done_at, batch, done]: done its writes; done_at when processing returned, or
        # when ``done`` completed (stamped then: the gate's proof must cover that moment, not
        # the later one when this task gets to the batch, or every batch waits for a proof of
        # its own, one after the other)
        self.pending: deque[list[Any]] = deque()
        self.redo: deque[Batch] = deque()
        self.added = asyncio.Event()
        self.task: asyncio.Task | None = None

    def begin(self) -> Any:
        return self.gate.token() if self.gate is not None else None

    def add(self, token: Any, batch: Batch, done: Any = None) -> None:
        entry = [token, time.monotonic(), batch, done]
        if done is not None:
            done.add_done_callback(lambda _, e=entry: e.__setitem__(1, time.monotonic()))
        self.pending.append(entry)
        self.added.set()
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())

    async def _writes_stopped(self) -> None:
        """Until no pending batch's writes are going on (a replay must not race the writes it
        replays; batches added meanwhile count too)."""
        while True:
            writing = [p[3] for p in self.pending if p[3] is not None and not p[3].done()]
            if not writing:
                return
            await asyncio.wait(writing)

    def _hand_over_again(self, again: list[Batch]) -> None:
        for batch in again:
            batch.redo, batch.done = True, None
        self.redo.extend(again)
        self.redone.inc(len(again))
        self.wake()

    async def _run(self) -> None:
        try:
            while True:
                if not self.pending:
                    self.added.clear()
                    await self.added.wait()
                    continue
                token, done_at, batch, done = self.pending[0]
                if done is not None:
                    if not done.done():
                        await asyncio.wait([done])
                    done_at = self.pending[0][1]  # when its writes completed (add's callback)
                    if done.cancelled() or done.exception() is not None:
                        # Its writes failed: this batch and every later one again, in order.
                        error = "cancelled" if done.cancelled() else describe(done.exception())
                        await self._writes_stopped()
                        again = [p[2] for p in self.pending]
                        self.pending.clear()
                        self._hand_over_again(again)
                        self.stream.log.warning("%s: a batch's writes failed (%s): %d batches (%d events) are "
                                                "processed again", self.stage, error, len(again),
                                                sum(len(b) for b in again))
                        continue
                if self.gate is None or await self.gate.settle(token, done_at):
                    self.pending.popleft()
                    for event in batch:
                        await self.stream.ack(event)
                    self.waited.observe(time.monotonic() - done_at)
                    continue
                # The node restarted after this batch began: process again every batch begun
                # before the restart was seen, in order, before any of them is acked.
                await self._writes_stopped()
                current = self.gate.token()
                again = [p[2] for p in self.pending if p[0] != current]
                self.pending = deque(p for p in self.pending if p[0] == current)
                self._hand_over_again(again)
                self.stream.log.warning("Cassandra restarted: %d batches (%d events) are processed again",
                                        len(again), sum(len(b) for b in again))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing more can be acked: stop the worker loudly
            fatal(self.stage, SystemicFault(f"{self.stage}: acks waiting for writes or Cassandra's commit log: "
                                            f"{describe(exc)}"))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


async def _drain(stream: Any, max_: int, min_: int, linger_ticks: int,
                 gate: Any, stage: str, overlap: bool) -> AsyncIterator[Batch]:
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
    late = _LateAcks(stream, gate, ready.set, stage) if gate is not None or overlap else None
    try:
        while not stream.should_stop:
            if late is not None and late.redo:  # writes a restarted Cassandra may have lost
                batch = late.redo.popleft()
                token = late.begin()
                yield batch
                late.add(token, batch, batch.done)
                continue
            if len(events) < min_:
                ready.clear()
                if await stream.wait_for_stopped(ready):
                    break
                continue
            await _linger(events, max_, queue, linger_ticks)
            room.clear()
            batch = Batch(events)
            del events[: len(batch)]
            token = late.begin() if late is not None else None
            yield batch
            # The consumer asked for the next batch: this one is processed (its writes may
            # go on until batch.done).
            if late is not None:
                late.add(token, batch, batch.done)
            elif batch.done is not None:
                raise RuntimeError("drain_batches: Batch.done set without overlap=True")
            else:
                for event in batch:
                    await stream.ack(event)
            room.set()
    finally:
        if late is not None:
            await late.close()
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
