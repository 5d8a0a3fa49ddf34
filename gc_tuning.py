"""The garbage collector of a long-running process (the stream worker, both HTTP services),
tuned once it has started.

CPython's defaults (700, 10, 10) promote every object that outlives two young collections, a
few milliseconds of work, to the old generation, and collect the whole heap when a quarter
of it is new: under load that is a full collection every few seconds, each a pause of every
coroutine of the process that grows with what the process holds.

* The worker, allocating ~36,000 objects a second under load, ran a full collection every
  2-3 s, each 90-500 ms (``timeline_gc_pause_seconds``, 2026-12-01).
* The query service with 10,000 open streams (~130 tracked objects each: the coroutines,
  futures and timers of a waiting stream) holds ~1.3 M objects; its full collections took
  0.9-1.4 s, and held every stream event back as long (``bench/live_bench.py``, 2026-12-02:
  3% of the stream events of a 40 s point 1.1 s late).

:func:`tune_gc` moves what start-up built out of the collector's reach (``gc.freeze``:
modules, the app, the clients) and collects the young generation after ``GC_THRESHOLD0`` net
allocations instead of 700, so that most objects (a batch's messages, a request's, a stream
event's) are gone by then and far fewer are promoted. The price: a young collection walks up
to that many objects, ~10-30 ms when they are cycles to free (a read that misses the cache
leaves some: the Cassandra driver's futures), rarely.
"""
from __future__ import annotations

import gc
import time
from typing import Any

GC_THRESHOLD0 = 50_000
# Buckets of the pause histograms (the worker's ``timeline_gc_pause_seconds``, the services'
# ``<service>_gc_pause_seconds``).
GC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def tune_gc() -> None:
    """Freeze what is alive now, and collect the young generation less often (module doc)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, older, oldest)


class GcPauses:
    """A ``gc.callbacks`` entry timing each collection into ``histogram`` (a Prometheus
    histogram labelled by ``generation``; generation 2 is a full collection)."""

    def __init__(self, histogram: Any) -> None:
        self.began = 0.0
        self.children = {g: histogram.labels(str(g)) for g in (0, 1, 2)}

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.began = time.perf_counter()
        else:
            self.children[info["generation"]].observe(time.perf_counter() - self.began)
