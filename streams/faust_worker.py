"""The worker class of the app (``Worker`` in ``faust_app``): faust's, without the terminal
spinner, and with the garbage collector tuned once it has started.

faust-streaming 0.15.3's ``Worker.on_setup_root_logger``, at ``-l warn`` or above (the
level every worker started by ``localenv.worker`` runs at), adds a handler that spins a
terminal spinner on every log record and sets the *root logger* to DEBUG for it. From then
on every ``log.debug`` of aiokafka, faust and the Cassandra driver builds a ``LogRecord``
that the output handler then drops: 7.6% of the worker's busy samples (37% of the
consumer thread's) at half the fanout capacity (py-spy, 2026-12-01). A worker runs
headless (its output is a log file or a service manager's journal), so it never spins.

The garbage collector: with CPython's thresholds (700, 10, 10) the worker, allocating ~36,000
objects a second under load, ran a full collection every 2-3 s, each a 90-500 ms pause of
every coroutine (both stages, the commits, the heartbeats; ``timeline_gc_pause_seconds``,
2026-12-01). Once started, the worker moves what start-up built out of the collector's reach
(``gc.freeze``: modules, the app, the clients) and collects the young generation after
``GC_THRESHOLD0`` net allocations instead of 700, so that most objects (a batch's messages
and events) are gone by then and far fewer are promoted to the old generations.
"""
from __future__ import annotations

import gc
import logging

import faust

GC_THRESHOLD0 = 50_000


def tune_gc() -> None:
    """Freeze what is alive now, and collect the young generation less often (module doc)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, older, oldest)


class Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None  # no spinner, no spinner handler, the root logger keeps ``level``
        super().on_setup_root_logger(logger, level)

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        tune_gc()
