"""The worker class of the app (``Worker`` in ``faust_app``): faust's, without the terminal
spinner, and with the garbage collector tuned once it has started.

faust-streaming 0.15.3's ``Worker.on_setup_root_logger``, at ``-l warn`` or above (the
level every worker started by ``localenv.worker`` runs at), adds a handler that spins a
terminal spinner on every log record and sets the *root logger* to DEBUG for it. From then
on every ``log.debug`` of aiokafka, faust and the Cassandra driver builds a ``LogRecord``
that the output handler then drops: 7.6% of the worker's busy samples (37% of the
consumer thread's) at half the fanout capacity (py-spy, 2026-12-01). A worker runs
headless (its output is a log file or a service manager's journal), so it never spins.

Before it starts, a worker that leads its session raises the session's CPU priority
(``cpu_priority``: on a machine shared with the servers its threads waited for a CPU as long as
they ran). Once started, the worker tunes the garbage collector (``gc_tuning``: with CPython's defaults it
ran a full collection every 2-3 s under load, each a 90-500 ms pause of both stages).
"""
from __future__ import annotations

import logging

import faust

from cpu_priority import raise_priority
from gc_tuning import tune_gc
from settings import get_settings


class Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None  # no spinner, no spinner handler, the root logger keeps ``level``
        super().on_setup_root_logger(logger, level)

    async def on_first_start(self) -> None:
        raise_priority(get_settings().session_nice)  # a worker that leads its session (cpu_priority.py)
        await super().on_first_start()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        tune_gc()
