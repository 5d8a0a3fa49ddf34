"""The loop every agent runs: batches from the stream, processed under ``agents/failures``.

Concurrency stays 1 per agent (faust-streaming can commit past a message still in flight
with more): an agent batches inside itself (``agents/take.drain_batches``: a batch as soon
as an event is buffered, no timer), and a batch is acked
only when ``process`` returned, so every store write of its events is done.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from agents.failures import Isolator, guard
from agents.metrics import BatchTimer
from agents.outbox import publish_dead_letter
from agents.take import drain_batches, pace_pause

R = TypeVar("R")


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
        async for events in drain_batches(stream, batch_max, gate=gate, stage=stage):
            began = time.monotonic()
            with BatchTimer(stage, len(events)):
                await isolator.run(events, lambda part: process(resource, part), dead_letter)
            pause = pace_pause(len(events), batch_max, time.monotonic() - began, pace_s)
            if pause:
                await asyncio.sleep(pause)
