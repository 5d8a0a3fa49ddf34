"""The bounded shutdown (agents/shutdown.py) without a worker: what waits, what exits.

``hard_exit`` is replaced by a recorder; tests/integration/test_shutdown.py runs the real
thing against a worker and times it.
"""
from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

import agents.shutdown as shutdown
from agents.shutdown import ShutdownState, bounded_wait_empty


class App:
    def __init__(self, stopping: bool) -> None:
        self.should_stop = stopping


class Consumer:
    def __init__(self) -> None:
        self._unacked_messages = {object(), object()}
        self.commits = 0

    async def commit(self) -> None:
        self.commits += 1


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(shutdown, "hard_exit", lambda state, why: calls.append(why))
    return calls


@pytest.fixture(autouse=True)
def leaves(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    async def leave_group(consumer: Any) -> None:
        calls.append(consumer)

    monkeypatch.setattr(shutdown, "leave_group", leave_group)
    return calls


class NeverEmpty:
    """Like Faust's wait_empty with a batch that cannot finish: it even swallows
    cancellation. (``release`` ends it after the test; the real worker exits instead.)"""

    def __init__(self) -> None:
        self.released = False

    async def __call__(self, consumer: Any, logger: Any) -> None:
        while not self.released:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass


async def test_a_rebalance_waits_as_faust_does(exits: list[str]) -> None:
    """No signal: the wait is Faust's own, however long it takes."""
    state = ShutdownState(grace_s=0.1)
    done = []

    async def slow_empty(consumer: Any, logger: Any) -> None:
        await asyncio.sleep(0.3)
        done.append(True)

    await bounded_wait_empty(App(stopping=False), state, slow_empty)(Consumer(), None)
    assert done == [True] and exits == []


async def test_after_a_signal_unfinished_batches_end_the_process_at_the_deadline(exits: list[str], leaves: list[Any]) -> None:
    state = ShutdownState(grace_s=shutdown.DRAIN_MARGIN_S + 0.3, signalled_at=time.monotonic(), signal_name="SIGTERM")
    consumer, never_empty = Consumer(), NeverEmpty()
    began = time.monotonic()
    try:
        await asyncio.wait_for(bounded_wait_empty(App(stopping=True), state, never_empty)(consumer, None), 5)
    finally:
        never_empty.released = True
    assert 0.25 < time.monotonic() - began < 1.0
    assert consumer.commits == 1, "what finished is committed before the exit"
    assert leaves == [consumer], "and the group is told this member leaves"
    assert len(exits) == 1 and state.unfinished() == 2


async def test_after_a_signal_finished_batches_stop_cleanly(exits: list[str]) -> None:
    state = ShutdownState(grace_s=8.0, signalled_at=time.monotonic(), signal_name="SIGTERM")
    consumer = Consumer()

    async def empties(consumer: Any, logger: Any) -> None:
        await asyncio.sleep(0.05)

    await bounded_wait_empty(App(stopping=True), state, empties)(consumer, None)
    assert exits == [] and consumer.commits == 0


def test_the_first_signal_starts_one_watchdog_and_every_signal_reaches_the_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ShutdownState] = []
    monkeypatch.setattr(shutdown, "_watchdog", started.append)
    forwarded: list[int] = []
    state = ShutdownState(grace_s=8.0)
    shutdown._on_signal(state, lambda signum, frame: forwarded.append(signum), signal.SIGTERM, None)
    shutdown._on_signal(state, lambda signum, frame: forwarded.append(signum), signal.SIGINT, None)
    time.sleep(0.05)  # the watchdog thread ran its (recording) target
    assert started == [state] and state.signal_name == "SIGTERM" and state.signalled_at is not None
    assert forwarded == [signal.SIGTERM, signal.SIGINT]


def test_the_watchdog_exits_at_the_grace_whatever_the_loop_does(exits: list[str]) -> None:
    state = ShutdownState(grace_s=0.2, signalled_at=time.monotonic(), signal_name="SIGTERM")
    began = time.monotonic()
    shutdown._watchdog(state)
    assert 0.15 < time.monotonic() - began < 0.5 and len(exits) == 1
