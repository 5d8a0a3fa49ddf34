"""Edge tables: one table row per edge, so a follow costs O(1) bytes.

A follower set is never stored as one value (Faust's SetTable rewrites the whole
set on every change). Each edge ``owner -> other`` is its own key
``b"<owner>:<other>"``; the edges of one owner are found with a prefix scan of
the RocksDB partition that holds the current event's partition.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from faust.streams import _current_event, current_event


def edge_key(owner: int, other: int) -> bytes:
    return b"%d:%d" % (owner, other)


def entity_key(entity_id: int) -> bytes:
    return b"%d" % entity_id


@contextmanager
def event_scope(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event while a batch is processed.

    Table writes go to the changelog partition (and RocksDB partition) of the
    current event. ``stream.take_events`` hands out a batch from several
    partitions, so each event's table work must run in its own scope.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def iter_edges(table: Any, owner: int) -> Iterator[int]:
    """The ``other`` ids of every edge of ``owner`` in the current partition."""
    prefix = b"%d:" % owner
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None:  # memory store (tests): keys are the Python objects
        for key in list(store.keys()):
            if key.startswith(prefix):
                yield int(key[len(prefix):])
        return
    event = current_event()
    db = store._db_for_partition(event.message.partition)
    it = db.iter()
    it.seek(prefix)
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            break
        yield int(key[len(prefix):])
        it.next()
