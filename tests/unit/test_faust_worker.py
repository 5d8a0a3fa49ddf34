"""The app's worker class keeps the root logger at the worker's level (``streams/faust_worker.py``)."""
from __future__ import annotations

import logging

import faust
import pytest

from streams.faust_worker import Worker


def root_after_setup(worker_class: type, app: faust.App, level: int) -> logging.Logger:
    """A stand-in root logger, as mode's logging set-up hands it to the worker's hook."""
    worker = worker_class(app, loglevel=level, quiet=True)
    logger = logging.Logger("stand-in root")
    logger.addHandler(logging.StreamHandler())
    logger.setLevel(level)
    worker.on_setup_root_logger(logger, level)
    return logger


def test_the_app_runs_this_worker_class() -> None:
    from faust_app import app

    assert app.conf.Worker is Worker


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR])
def test_at_warn_or_above_the_root_logger_keeps_its_level(faust_test_app: faust.App, level: int) -> None:
    logger = root_after_setup(Worker, faust_test_app, level)
    assert logger.level == level
    assert len(logger.handlers) == 1
    assert not logger.isEnabledFor(logging.DEBUG)


def test_faust_own_worker_puts_the_root_logger_at_debug(faust_test_app: faust.App) -> None:
    # What the class exists for: if faust stops doing this, the class can go.
    logger = root_after_setup(faust.Worker, faust_test_app, logging.WARNING)
    assert logger.level == logging.DEBUG


def test_once_started_the_collector_spares_the_start_up_heap_and_collects_young_objects_less_often() -> None:
    import gc

    from gc_tuning import GC_THRESHOLD0, tune_gc

    thresholds = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 1000, "what start-up built is out of the collector's reach"
        assert gc.get_threshold() == (GC_THRESHOLD0, *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
