"""The loop every agent runs: batches from the stream, processed under ``agents/failures``.

Concurrency stays 1 per agent (faust-streaming can commit past a message still in flight
with more): an agent batches inside itself (``agents/take.drain_batches``: a batch as soon
as an event is buffered, no timer), and a batch is acked
only when ``process`` returned, so every store write of its events is done.

With ``begin`` and ``overlap`` (stage 2), a batch's writes go on in the background while the
next batch is processed: ``begin`` processes the batch up to its writes and returns the
futures of its writes (the writes of a batch start after the previous batch's are done:
``begin``'s business) and of "the next batch may begin" (every write of this one has started:
the next batch gathers what arrives meanwhile instead of being walked at once, small); the
batch is acked when its writes are done (``agents/take.py``); a batch is walked while the
writes of at most ``overlap`` earlier batches are unfinished. A batch whose writes failed is
processed again, with every later one, to the end each (``process`` under the isolator), so a
store's refusal of one event is isolated and dead-lettered as without the overlap.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from agents.failures import Isolator, SystemicFault, describe, guard
from agents.metrics import BatchTimer
from agents.outbox import publish_dead_letter
from agents.take import drain_batches, pace_pause

R = TypeVar("R")
log = logging.getLogger(__name__)


async def consume(
    stream: Any,
    isolator: Isolator,
    setup: Callable[[], Awaitable[R]],
    process: Callable[[R, Sequence[Any]], Awaitable[None]],
    *,
    batch_max: int,
    dead_letters_topic: Any,
    partitions: int,
    pace_s: float = 0.0,
    gate_of: Callable[[R], Any] | None = None,
    begin: Callable[[R, Sequence[Any]], Awaitable[tuple[asyncio.Future, asyncio.Future]]] | None = None,
    overlap: int = 0,
) -> None:
    """Open the agent's stores (``setup``), then process each batch; an event that cannot be
    processed is dead-lettered, a systemic fault stops the worker (``agents/failures.py``).
    ``pace_s``: a stage off the latency path waits between batches (``take.pace_pause``); the
    wait comes after the batch's processing and before its ack, so a stop meanwhile only
    replays a batch whose writes are idempotent.
    ``gate_of(resource)``: the ``sinks/cassandra_sync.CommitLogGate`` (or None) that a batch's
    acks wait for, when the Cassandra node acknowledges writes before its commit log is on disk."""
    stage = isolator.stage
    async with guard(stage):
        resource = await setup()

        async def dead_letter(event: Any, reason: str) -> None:
            await publish_dead_letter(dead_letters_topic, event, reason, stage, partitions)

        gate = gate_of(resource) if gate_of is not None else None
        overlapped = begin is not None and overlap > 0
        writing: list[asyncio.Future] = []  # batches' writes in flight (overlap)
        may_begin: asyncio.Future | None = None  # the last batch begun has started all its writes
        async for events in drain_batches(stream, batch_max, gate=gate, stage=stage, overlap=overlapped):
            began = time.monotonic()
            writing = [f for f in writing if not f.done()]
            if overlapped and not events.redo:
                if may_begin is not None and not may_begin.done():
                    await asyncio.wait([may_begin])
                    writing = [f for f in writing if not f.done()]
                while len(writing) > overlap:  # walked while up to ``overlap`` earlier batches write
                    await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                    writing = [f for f in writing if not f.done()]
                with BatchTimer(stage, len(events)) as timer:
                    try:
                        done, may_begin = await begin(resource, events)
                    except (SystemicFault, asyncio.CancelledError):
                        raise
                    except Exception as exc:  # noqa: BLE001 - processed to the end below, isolated
                        log.warning("%s: a batch failed before its writes (%s); processing it to the end",
                                    stage, describe(exc))
                        timer.deferred = True
                        timer.finish(False)
                        done = None
                    else:
                        timer.deferred = True
                        done.add_done_callback(lambda f, t=timer: t.finish(not f.cancelled() and f.exception() is None))
                if done is not None:
                    events.done = done
                    writing.append(done)
                    continue
            if writing:  # a batch processed to the end comes after the writes of earlier ones
                await asyncio.wait(writing)
                writing = []
            with BatchTimer(stage, len(events)):
                await isolator.run(events, lambda part: process(resource, part), dead_letter)
            pause = pace_pause(len(events), batch_max, time.monotonic() - began, pace_s)
            if pause:
                await asyncio.sleep(pause)
