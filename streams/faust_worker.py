"""The worker class of the app (``Worker`` in ``faust_app``): faust's, without the terminal
spinner, and with the garbage collector tuned once it has started.

faust-streaming 0.15.3's ``Worker.on_setup_root_logger``, at ``-l warn`` or above (the
level every worker started by ``localenv.worker`` runs at), adds a handler that spins a
terminal spinner on every log record and sets the *root logger* to DEBUG for it. From then
on every ``log.debug`` of aiokafka, faust and the Cassandra driver builds a ``LogRecord``
that the output handler then drops: 7.6% of the worker's busy samples (37% of the
consumer thread's) at half the fanout capacity (py-spy, 2026-12-01). A worker runs
headless (its output is a log file or a service manager's journal), so it never spins.

Once started, the worker tunes the garbage collector (``gc_tuning``: with CPython's defaults it
ran a full collection every 2-3 s under load, each a 90-500 ms pause of both stages), and sets
the interpreter's switch interval (``TL_WORKER_SWITCH_INTERVAL_US``): how long the stages'
event loop may keep the GIL from the threads that bring Kafka's fetches and Cassandra's
replies in.
"""
from __future__ import annotations

import logging
import sys

import faust

from gc_tuning import tune_gc


class Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None  # no spinner, no spinner handler, the root logger keeps ``level``
        super().on_setup_root_logger(logger, level)

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        from faust_app import settings  # the app's settings (this module is imported by faust_app)

        tune_process(settings.worker_switch_interval_us)


def tune_process(switch_interval_us: int) -> None:
    """The collector (``gc_tuning``) and the interpreter's switch interval, once started."""
    tune_gc()
    sys.setswitchinterval(switch_interval_us / 1e6)
