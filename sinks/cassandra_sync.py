"""Kafka offsets that wait for Cassandra's commit log to reach the disk, instead of an fsync
before every write's acknowledgement.

The pipeline commits a batch's Kafka offsets after Cassandra acknowledged its writes, so an
acknowledged write must survive a crash of Cassandra. ``commitlog_sync: batch`` gives that by
syncing the commit log before each acknowledgement; on this kind of machine that halved the
rows a node takes and doubled its CPU per row (``docs/operations.md``). With
``commitlog_sync: periodic`` a node acknowledges a write once it is in its commit log's
buffer and syncs every ``commitlog_sync_period``: a SIGKILLed node lost what it had
acknowledged in its last ~0.1 s (the fault suite found 6 and 22 writes missing).

This module keeps the guarantee with ``periodic``: a batch's events are acked (so their
offsets can be committed) only once its writes are known to be on disk. What tells: in
``periodic`` mode a write is not applied while the last completed sync *started* more than
``periodic_commitlog_sync_lag_block`` (L; by default 1.5 x the period) before it
(``PeriodicCommitLogService.maybeWaitForSync`` in Cassandra 4.0 - 5.0: the writer waits for
such a sync). So when a write *sent* at time ``s`` (by our clock, before it left) succeeds,
a sync that started after ``s - L`` has completed, and it holds every write whose
acknowledgement we had received before ``s - L``. Only intervals on one clock are compared
(a write acknowledged before we stamped ``s - L``, a sync that started after the server
received a write we sent at ``s``), so the node's clock need not agree with ours; ``L`` gets
a margin for the clocks' rates.

A proof holds only within one life of the node: a write acknowledged by a process that was
then killed is not proven by a write to its restarted successor. So each batch carries the
node's ``gossip_generation`` (``system.local``; a new, larger one at every start) as last
seen before the batch began, and a proof counts only when a read of the generation *after*
the proving write still shows it. When it does not, ``settle`` answers False and the batch
(and every later one begun before the restart was seen) is processed again before any of
them is acked (``agents/take.py``): what the killed node lost is written again.

Under load the stages' own writes prove earlier batches durable; with nothing else written,
a one-row probe write (``commitlog_probe``) does, ``L`` after the batch. Any write proves it
(all tables and the Paxos state share one commit log); reads prove nothing. This holds for
the node that took the writes: one node per data center (the local single node, each region's
node). With replicas (a ring at replication factor >= 2 and QUORUM writes) the replicas are
the durability and no gate is used.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from policies.failures import SystemicFault

log = logging.getLogger(__name__)

#: Margin on the server's lag block for the two clocks' rates and scheduling (x1.05 + 5 ms).
LAG_MARGIN = 1.05
LAG_SLACK_S = 0.005
#: After a batch's ``L`` has passed, how long the stages' own writes get to prove it before a
#: probe is sent (a fraction of ``L``, at least 5 ms).
PROBE_GRACE = 0.25

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|us|µs|m|h)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "µs": 1e-6, "m": 60.0, "h": 3600.0, None: 1e-3}


def parse_duration_s(value: str | None) -> float | None:
    """Seconds of a ``system_views.settings`` duration ("75ms", "10s", "10000" = ms); None if unset."""
    if value is None or value in ("", "null"):
        return None
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def sync_lag_s(server: Mapping[str, str | None]) -> float | None:
    """The lag block ``L`` (s) of a node whose settings are ``server``; None when the node syncs
    before acknowledging (``batch``, ``group``), so no gate is needed. Settings it cannot read
    are a configuration fault (``SystemicFault``: the worker stops with exit 78, never guesses)."""
    mode = (server.get("commitlog_sync") or "").lower()
    if mode != "periodic":
        return None
    try:
        block = parse_duration_s(server.get("periodic_commitlog_sync_lag_block"))
        period = parse_duration_s(server.get("commitlog_sync_period"))
    except ValueError as exc:
        raise SystemicFault(f"Cassandra's commit log settings: {exc}") from exc
    if block is None:
        if period is None:
            raise SystemicFault("commitlog_sync is periodic but commitlog_sync_period is not shown")
        block = 1.5 * period
    return block


def gate_lag_s(lag_block_s: float) -> float:
    """How long after a write's acknowledgement a later write must have been sent to prove it."""
    return lag_block_s * LAG_MARGIN + LAG_SLACK_S


def needs_gate(lag_block_s: float | None, local_nodes: int, local_replicas: int) -> bool:
    """Whether acks must wait for the commit log: a node that acknowledges before its sync, and
    no replicas to hold the write instead. Refuses what it cannot make safe (``SystemicFault``:
    a configuration the worker stops on, exit 78, rather than restarting the agent in a loop)."""
    if lag_block_s is None:
        return False
    if local_replicas >= 2:
        return False  # QUORUM writes: the replicas are the durability (docs/reliability.md)
    if local_nodes > 1:
        raise SystemicFault(
            f"commitlog_sync: periodic with one replica per row over {local_nodes} nodes: a node's crash "
            "loses writes it acknowledged, and a write to one node proves nothing about another. "
            "Use commitlog_sync: batch on the nodes, or a replication factor of at least 2 (QUORUM)."
        )
    return True


async def _once(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    return await fn()


@dataclass
class CommitLogGate:
    """What is known to be on disk, and waiting for it (see the module doc).

    ``sent()`` stamps a write before it leaves; ``succeeded(stamp)`` records that it was
    acknowledged; ``token()`` is taken when a batch begins; ``await settle(token, done_at)``
    returns True once every write of the batch (acknowledged before ``done_at``) is on disk,
    probing when no other write proves it in time, or False when the node restarted since
    the batch began (its writes may be lost: process it again)."""

    lag_s: float
    probe: Callable[[], Awaitable[Any]]
    generation: Callable[[], Awaitable[int]]  # the node's gossip_generation, read now
    gen: int  # the generation last seen
    clock: Callable[[], float] = time.monotonic
    proven: float = -math.inf  # writes acknowledged before this time are on disk, if ``gen`` still holds
    confirmed: float = -math.inf  # ... and a later read of the generation showed ``gen``
    probes: int = 0
    restarts: int = 0
    on_probe: Callable[[], None] | None = None  # e.g. a metric's inc
    # How a probe or a generation read is retried while Cassandra is away: the worker's
    # ``agents.sinks.with_retry`` (transient errors only, logged and counted); once by default.
    retry: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]] = _once
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _probing: asyncio.Future | None = None
    _reading: asyncio.Future | None = None  # the generation read in flight (see _generation_after)

    def sent(self) -> float:
        return self.clock()

    def succeeded(self, sent_at: float) -> None:
        before = sent_at - self.lag_s
        if before > self.proven:
            self.proven = before
            self._changed.set()

    def token(self) -> int:
        return self.gen

    def durable(self, done_at: float) -> bool:
        return self.proven >= done_at

    async def settle(self, token: int, done_at: float) -> bool:
        """Wait until the writes acknowledged before ``done_at`` are on disk (True), or learn
        that the node restarted since ``token`` was taken (False). Only a write sent ``lag_s``
        after ``done_at`` can prove them: wait that long, give the stages' writes a grace
        period to do so, then probe (through ``retry`` while Cassandra does not answer); then
        read the generation. An error ``retry`` gives up on is raised."""
        if token != self.gen:
            return False
        if self.confirmed >= done_at:
            return True
        if not self.durable(done_at):
            await self._prove(done_at)
        gen, candidate = await self._generation_after(done_at)
        if gen != self.gen:  # another life of the node (or another node answering for it)
            log.warning("Cassandra restarted (gossip generation %d -> %d): batches begun before are "
                        "processed again", self.gen, gen,
                        extra={"event": "cassandra_restart_seen", "generation": gen})
            self.gen, self.proven, self.confirmed = gen, -math.inf, -math.inf
            self.restarts += 1
            return False
        if token != self.gen:
            return False
        self.confirmed = max(self.confirmed, candidate)
        return True

    async def _generation_after(self, done_at: float) -> tuple[int, float]:
        """The node's generation, read after the writes acknowledged before ``done_at`` were
        proven, and what was proven when the read was sent. Concurrent callers share a read in
        flight that was sent late enough for them (the stages settle their batches at about
        the same moments: one read instead of one per stage)."""
        current = self._reading
        if current is not None and not current.done() and current.covers >= done_at:  # type: ignore[attr-defined]
            return await asyncio.shield(current), current.covers  # type: ignore[attr-defined]
        covers = self.proven
        task = asyncio.ensure_future(self.retry("commit log generation read", self.generation))
        task.covers = covers  # type: ignore[attr-defined]
        self._reading = task
        return await asyncio.shield(task), covers

    async def _prove(self, done_at: float) -> None:
        due = done_at + self.lag_s
        wait = due - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        grace_until = self.clock() + max(PROBE_GRACE * self.lag_s, 0.005)
        while not self.durable(done_at):
            left = grace_until - self.clock()
            if left <= 0:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                break
        while not self.durable(done_at):
            await self.retry("commit log probe", lambda: self._probe_after(due))

    async def _probe_after(self, due: float) -> None:
        """One probe sent at or after ``due``; concurrent callers share one in flight if it
        was sent late enough for them."""
        current = self._probing
        if current is not None and not current.done() and getattr(current, "sent_at", -math.inf) >= due:
            await asyncio.shield(current)
            return
        sent_at = self.sent()

        async def run() -> None:
            await self.probe()
            self.probes += 1
            if self.on_probe is not None:
                self.on_probe()
            self.succeeded(sent_at)

        task = asyncio.ensure_future(run())
        task.sent_at = sent_at  # type: ignore[attr-defined]
        self._probing = task
        await asyncio.shield(task)
