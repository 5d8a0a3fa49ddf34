"""Applies ``policies/fetch_gather.py`` to the worker's Kafka consumer.

Every ``PERIOD_S`` a task of the app reads how many records the worker took (faust's monitor
counts every message in) and sets the fetch parameters of the aiokafka consumer that faust's
consumer thread runs. Those are aiokafka internals (``Fetcher._fetch_max_wait_ms`` and
``_fetch_min_bytes``, read each time a fetch request is built, in aiokafka 0.14.0, locked), like
``agents/outbox.send_now``: re-check them on any aiokafka or faust upgrade. Without them (another
version) the task logs once and stops: the consumer keeps faust's settings, nothing else changes.
Assigning an int from the app's thread while the consumer thread builds a request is safe in
CPython (one attribute store).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agents.metrics import FETCH_GATHERING
from policies.fetch_gather import FetchGather, rate_per_s

log = logging.getLogger(__name__)
PERIOD_S = 0.25


def consumer_fetcher(app: Any) -> Any | None:
    """The aiokafka ``Fetcher`` of the app's consumer thread, once the consumer has started."""
    consumer = getattr(getattr(getattr(app, "consumer", None), "_thread", None), "_consumer", None)
    return getattr(consumer, "_fetcher", None)


def apply(fetcher: Any, params: tuple[int, int]) -> bool:
    """Set (max wait ms, min bytes) on an aiokafka fetcher; False if it has no such settings."""
    if not (hasattr(fetcher, "_fetch_max_wait_ms") and hasattr(fetcher, "_fetch_min_bytes")):
        return False
    fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes = params  # noqa: SLF001 - see the module doc
    return True


class Gatherer:
    """One tick of the controller: measure the rate since the last tick, decide, apply."""

    def __init__(self, policy: FetchGather) -> None:
        self.policy = policy
        self.gathering = False
        self.count: int | None = None
        self.at = 0.0
        self.applied_to: Any = None  # the fetcher last set (a new consumer gets its settings again)

    def tick(self, fetcher: Any, received_total: int, now: float) -> bool:
        """False when the fetcher cannot be set (the controller stops)."""
        rate = 0.0 if self.count is None else rate_per_s(self.count, received_total, now - self.at)
        self.count, self.at = received_total, now
        gathering = self.policy.gathering(self.gathering, rate)
        if gathering != self.gathering or fetcher is not self.applied_to:
            if not apply(fetcher, self.policy.params(gathering)):
                return False
            self.gathering, self.applied_to = gathering, fetcher
            FETCH_GATHERING.set(1 if gathering else 0)
        return True


def install(app: Any, policy: FetchGather) -> None:
    """Run the controller as a task of the app's worker (nothing with ``wait_ms`` 0)."""
    if policy.wait_ms == 0:
        return

    async def gather_fetches() -> None:
        gatherer = Gatherer(policy)
        while True:
            await asyncio.sleep(PERIOD_S)
            fetcher = consumer_fetcher(app)
            if fetcher is None:
                continue  # not started yet
            received = getattr(app.monitor, "messages_received_total", 0)
            if not gatherer.tick(fetcher, received, time.monotonic()):
                log.warning("fetch gathering off: the Kafka consumer has no fetch settings to change (%s)",
                            type(fetcher).__name__)
                return

    app.task(gather_fetches)
