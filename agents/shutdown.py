"""Bounded shutdown: after SIGTERM or SIGINT a worker is gone within ``TL_SHUTDOWN_GRACE_S``.

Why a worker ignored SIGTERM (faust-streaming 0.15.3, mode-streaming 0.7): the signal makes mode's
``Worker`` stop the app, and the app's ``_stop_consumer`` first waits in
``Consumer.wait_empty`` until every message handed to an agent has been acked, with no
time limit. A batch is acked only when the agent asks for the next one, so an agent
retrying a store that is down (``agents.sinks.with_retry``), or an agent that crashed
before reading its stream (``get_sinks`` while Cassandra is down: the supervisor restarts
it every few seconds) holds its messages forever, and the worker waits forever. Mode
handles one signal per shutdown, so further SIGTERMs change nothing.

What ``install`` changes:

1. Faust still stops fetching and waits for the batches in flight, but only until
   ``grace - DRAIN_MARGIN_S`` after the signal. A worker whose batches finish in time stops
   as before (exit code 0).
2. Otherwise the worker commits the offsets of what is finished (Faust commits only acked
   offsets, and a batch is acked only after its writes and sends are done), leaves the
   consumer group (its partitions move at once), logs one line and ends the process with
   ``os._exit(EXIT_CODE)``. The unfinished batches stay
   uncommitted and the next worker processes them again, as after a crash: every write is
   idempotent.
3. A watchdog thread, started by the first signal, ends the process at ``grace`` seconds
   whatever the event loop is doing (stuck in a call that does not return, or in a later
   step of the shutdown such as flushing the producer to a broker that is gone).

Agents are never cancelled mid-batch to "stop cleanly": Faust's ``take_events`` acks a
batch in a ``finally`` when its generator is closed, so a cancelled agent would ack, and
the next commit would commit, a batch whose writes never happened. A hard exit acks
nothing.
"""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

#: Exit code of a worker that did not finish stopping in time (sysexits' EX_TEMPFAIL: the
#: unfinished work is retried by the next worker).
EXIT_CODE = 75
#: Of the grace period, what is kept for committing finished work, leaving the group and
#: exiting.
DRAIN_MARGIN_S = 2.5
COMMIT_TIMEOUT_S = 1.0
LEAVE_TIMEOUT_S = 1.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class ShutdownState:
    grace_s: float
    signalled_at: float | None = None  # time.monotonic() of the first SIGTERM/SIGINT
    signal_name: str = ""
    consumer: Any = None  # the app's consumer, once the shutdown has looked at it
    exiting: bool = False

    def unfinished(self) -> int | None:
        """Messages handed to the agents and not acked yet (None if unknown)."""
        try:
            return len(self.consumer._unacked_messages)  # noqa: SLF001 - no public count
        except Exception:  # noqa: BLE001 - best effort, possibly from another thread
            return None


def hard_exit(state: ShutdownState, why: str) -> None:
    """One line on stderr (the worker's log), then end the process without any clean-up."""
    if state.exiting:
        return
    state.exiting = True
    waited = time.monotonic() - (state.signalled_at or time.monotonic())
    count = state.unfinished()
    pending = f"{count} messages handed to the agents are unfinished" if count is not None else why
    line = (f"[shutdown] worker pid {os.getpid()} still stopping {waited:.1f}s after {state.signal_name} "
            f"(TL_SHUTDOWN_GRACE_S={state.grace_s:g}): {pending}; {why}. Exiting now with code {EXIT_CODE}; "
            f"offsets of unfinished batches are not committed, the next worker processes them again\n")
    try:
        os.write(2, line.encode("utf-8", "replace"))
    finally:
        os._exit(EXIT_CODE)


def _watchdog(state: ShutdownState) -> None:
    assert state.signalled_at is not None
    remaining = state.signalled_at + state.grace_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    hard_exit(state, "the event loop did not finish the shutdown in time")


def _on_signal(state: ShutdownState, previous: Any, signum: int, frame: Any) -> None:
    """Python-level handler: runs in the main thread between bytecodes, even when the
    event loop is busy, and starts the watchdog. asyncio's own dispatch (mode's
    ``_on_sigterm``) still happens through the loop's wakeup fd."""
    if state.signalled_at is None:
        state.signalled_at = time.monotonic()
        state.signal_name = signal.Signals(signum).name
        threading.Thread(target=_watchdog, args=(state,), name="shutdown-watchdog", daemon=True).start()
    if callable(previous):
        previous(signum, frame)


def hook_signals(state: ShutdownState) -> None:
    """Chain our handler in front of the ones installed so far (asyncio's, from mode's
    ``Worker.install_signal_handlers``). Main thread only."""
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        signal.signal(sig, lambda signum, frame, previous=previous: _on_signal(state, previous, signum, frame))


def bounded_wait_empty(app: Any, state: ShutdownState,
                       original: Callable[[Any, Any], Awaitable[None]]) -> Callable[[Any, Any], Awaitable[None]]:
    """``App._consumer_wait_empty`` with a deadline once a signal asked the app to stop.
    Without a signal (a rebalance of a running worker) it waits as Faust does."""

    async def wait_empty(consumer: Any, logger: Any) -> None:
        if state.signalled_at is None or not app.should_stop:
            await original(consumer, logger)
            return
        state.consumer = consumer
        budget = state.signalled_at + state.grace_s - DRAIN_MARGIN_S - time.monotonic()
        # Not asyncio.wait_for: Faust's wait_empty swallows CancelledError (in
        # _wait_for_ack), so a cancelled wait would keep waiting, and wait_for with it.
        waiting = asyncio.ensure_future(original(consumer, logger))
        done, _ = await asyncio.wait({waiting}, timeout=max(budget, 0.0))
        if done:
            waiting.result()
            return
        try:  # offsets of the batches that did finish
            await asyncio.wait_for(consumer.commit(), timeout=COMMIT_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - committed later by the next worker's progress anyway
            pass
        try:
            await asyncio.wait_for(leave_group(consumer), timeout=LEAVE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - then the group waits for the session timeout
            pass
        hard_exit(state, "in-flight batches did not finish (a store down?)")

    return wait_empty


async def leave_group(consumer: Any) -> None:
    """Tell the group coordinator this member leaves, so that its partitions move to the
    other workers now rather than after ``TL_BROKER_SESSION_TIMEOUT_S``. Faust's aiokafka
    consumer lives in its own thread; its coordinator commits nothing on close (Faust
    turns aiokafka's auto-commit off)."""
    thread = consumer._thread  # noqa: SLF001 - Faust's AIOKafkaConsumerThread
    coordinator = thread._ensure_consumer()._coordinator  # noqa: SLF001
    await thread.call_thread(coordinator.close)


def install(app: Any, grace_s: float) -> ShutdownState:
    """Bound the shutdown of ``app``'s worker to ``grace_s`` seconds after SIGTERM/SIGINT."""
    state = ShutdownState(grace_s=grace_s)
    # Attributes of this app object only: Faust and mode call them as methods of self.
    app._consumer_wait_empty = bounded_wait_empty(app, state, app._consumer_wait_empty)  # noqa: SLF001
    first_start = app.on_first_start

    async def on_first_start() -> None:
        # The worker (the app's parent service) installed its signal handlers in its own
        # on_first_start, before starting the app; this runs before table recovery, so a
        # signal during a long recovery is bounded too. An app started without a worker
        # (nothing handles SIGTERM) is left alone.
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            hook_signals(state)
        await first_start()

    app.on_first_start = on_first_start
    return state
