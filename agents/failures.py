"""How an agent survives errors: retry what is transient, isolate and dead-letter what is
permanent, stop the worker on what is systemic (``policies/failures.py`` decides which).

``run_isolated`` wraps the processing of one batch. A transient error (a store down) makes
the batch wait and retry; a permanent one splits the batch into halves, in order, until
the event that cannot be processed stands alone, and that event is dead-lettered with the
error as its reason; everything else of the batch is processed as usual. Every step of
every agent is idempotent, so processing part of a batch again is harmless.

A systemic error raises :class:`SystemicFault`; the agent loop (:func:`guard`) then logs
one line that says what to fix and ends the process with exit status 78 (EX_CONFIG).
Offsets are committed only for batches that finished, so nothing unfinished is acked.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from prometheus_client import Counter, Gauge

from policies.failures import PERMANENT, SYSTEMIC, TRANSIENT, ErrorStreak, SystemicFault, classify, halves

log = logging.getLogger(__name__)

EXIT_SYSTEMIC = 78  # EX_CONFIG (sysexits.h)

ERRORS = Counter(
    "timeline_errors_total", "Errors met by the agents, by stage and kind (transient, permanent, systemic)",
    ["stage", "kind"],
)
RETRYING = Gauge(
    "timeline_store_retrying", "1 while a store operation waits for a transient error to clear", ["what"]
)
ISOLATED = Counter(
    "timeline_isolated_events_total", "Events dead-lettered because a store refused them (permanent errors)",
    ["stage"],
)

DeadLetter = Callable[[Any, str], Awaitable[None]]


def retrying_now() -> list[dict]:
    """Store operations waiting on a transient error right now, and for how long (the health check)."""
    now = time.monotonic()
    return [{"what": what, "seconds": round(now - since, 1)} for what, since in sorted(_retrying.items())]


_retrying: dict[str, float] = {}


async def backoff_retry(what: str, fn: Callable[[], Awaitable[Any]], *, max_delay: float = 5.0,
                        on_retry: Callable[[BaseException, int, float], None] | None = None) -> Any:
    """Run ``fn`` until it succeeds, waiting (0.1 s doubling to ``max_delay``) after each
    TRANSIENT error; any other error is raised at once (retrying cannot help)."""
    delay = 0.1
    attempt = 0
    try:
        while True:
            try:
                return await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified
                if classify(exc) != TRANSIENT:
                    raise
                attempt += 1
                if attempt == 1:
                    _retrying[what] = time.monotonic()
                    RETRYING.labels(what).set(1)
                if on_retry is not None:
                    on_retry(exc, attempt, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
    finally:
        if attempt:
            _retrying.pop(what, None)
            RETRYING.labels(what).set(0)


def describe(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__


class Isolator:
    """The error handling of one agent (``stage``): see the module docstring."""

    def __init__(self, stage: str, streak_limit: int) -> None:
        self.stage = stage
        self.streak = ErrorStreak(streak_limit)

    def event_failed(self, exc: BaseException) -> str:
        """One event's processing raised ``exc``: its reason for the dead letter, or SystemicFault."""
        kind = classify(exc)
        ERRORS.labels(self.stage, kind).inc()
        if kind == SYSTEMIC:
            raise SystemicFault(f"{self.stage}: {describe(exc)}") from exc
        if self.streak.failed(exc):
            raise SystemicFault(
                f"{self.stage}: {self.streak.count} events in a row failed with the same error "
                f"({describe(exc)}); this is a bug or a broken store, not bad input"
            ) from exc
        return f"processing error: {describe(exc)}"

    def event_succeeded(self) -> None:
        self.streak.succeeded()

    async def run(self, events: Sequence[Any], process: Callable[[Sequence[Any]], Awaitable[None]],
                  dead_letter: DeadLetter) -> None:
        """Process ``events``; a permanent error isolates and dead-letters the event behind it."""
        delay = 0.1
        while True:
            try:
                await process(events)
                return
            except asyncio.CancelledError:
                raise
            except SystemicFault:
                raise
            except Exception as exc:  # noqa: BLE001 - classified
                kind = classify(exc)
                if kind == SYSTEMIC:
                    ERRORS.labels(self.stage, kind).inc()
                    raise SystemicFault(f"{self.stage}: {describe(exc)}") from exc
                if kind == TRANSIENT:  # raised outside a retried store call: retry the batch
                    ERRORS.labels(self.stage, kind).inc()
                    log.warning("%s: batch of %d failed (%s); retrying in %.1fs",
                                self.stage, len(events), describe(exc), delay,
                                extra={"event": "batch_retry", "stage": self.stage, "events": len(events),
                                       "error": describe(exc), "retry_in_s": round(delay, 2)})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                assert kind == PERMANENT
                if len(events) > 1:
                    log.warning("%s: batch of %d failed (%s); isolating the event behind it",
                                self.stage, len(events), describe(exc),
                                extra={"event": "batch_isolate", "stage": self.stage, "events": len(events),
                                       "error": describe(exc)})
                    for half in halves(list(events)):
                        await self.run(half, process, dead_letter)
                    return
                reason = self.event_failed(exc).replace("processing error", "refused by a store", 1)
                ISOLATED.labels(self.stage).inc()
                await dead_letter(events[0], reason)
                return


def fatal(stage: str, fault: BaseException) -> None:
    """Stop the worker now with one clear line (a systemic fault: see the module docstring)."""
    cause = fault.__cause__
    line = (f"WORKER STOPPED (exit {EXIT_SYSTEMIC}): systemic fault in stage {stage}: {fault}. "
            "Nothing after the last finished batch was acked; fix the cause and restart the worker.")
    if cause is not None:
        log.critical(line, exc_info=(type(cause), cause, cause.__traceback__))
    else:
        log.critical(line)
    print(line, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    os._exit(EXIT_SYSTEMIC)


@asynccontextmanager
async def guard(stage: str) -> AsyncIterator[None]:
    """Wrap an agent's loop: a SystemicFault that escapes it ends the worker process."""
    try:
        yield
    except SystemicFault as fault:
        fatal(stage, fault)
