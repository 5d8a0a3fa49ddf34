"""Read markers: the newest tweet id a user has read on a timeline, shared by their devices.

Modelled on Mastodon's markers (``last_read_id``, ``version``, ``updated_at``), with one
rule Mastodon leaves to the client: a marker never moves backwards by accident. Two
devices race, or a phone that was offline sends an old position late: the stale write
must lose to the newer one. So a write is decided against the stored marker:

* without ``version``: it moves the marker forward only. A larger ``last_read_id`` is
  applied; the same id is an idempotent repeat (accepted, nothing changes); a smaller one
  is a stale write and loses (``conflict``).
* with ``version`` (the one the client last read): a deliberate move, backwards included
  ("mark as unread from here"), applied only if nobody wrote since that version; any
  other version is a conflict (another device wrote meanwhile: read, then decide again).

Every applied write increments ``version``. The store (``query/markers.py``) reads the
row under a lock, asks :func:`decide`, and writes what it says in the same transaction.
"""
from __future__ import annotations

from typing import NamedTuple

TIMELINES = ("home",)


class Marker(NamedTuple):
    last_read_id: int
    version: int


class Decision(NamedTuple):
    outcome: str  # "applied", "unchanged" (an idempotent repeat) or "conflict"
    marker: Marker | None  # what the row holds after the write (None: still no row)
    reason: str = ""


def decide(stored: Marker | None, last_read_id: int, version: int | None) -> Decision:
    """The outcome of writing ``last_read_id`` (optionally at ``version``) over ``stored``."""
    if last_read_id < 1:
        raise ValueError(f"last_read_id must be >= 1, got {last_read_id}")
    if stored is None:
        if version is not None and version != 0:
            return Decision("conflict", None, f"no marker exists, so version {version} cannot match (use 0)")
        return Decision("applied", Marker(last_read_id, 1))
    if version is not None:
        if version != stored.version:
            return Decision("conflict", stored,
                            f"version {version} is stale: the marker is at version {stored.version}")
        if last_read_id == stored.last_read_id:
            return Decision("unchanged", stored)
        return Decision("applied", Marker(last_read_id, stored.version + 1))
    if last_read_id > stored.last_read_id:
        return Decision("applied", Marker(last_read_id, stored.version + 1))
    if last_read_id == stored.last_read_id:
        return Decision("unchanged", stored)
    return Decision("conflict", stored,
                    f"last_read_id {last_read_id} is older than the stored {stored.last_read_id}; "
                    f"send version {stored.version} to move the marker backwards on purpose")
