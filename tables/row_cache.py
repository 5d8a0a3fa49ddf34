"""JSON rows of a table that one agent alone reads and writes, kept between batches.

The delivery stage reads a recipient's row for every delivery (``agents/deliver.py``); with
small batches under steady load that is one RocksDB get, one JSON decode and one call of
Faust's table sensors per delivery, about a tenth of the worker's main thread at 600
deliveries/s (py-spy). Only that agent writes the table (concurrency 1), so for the
partitions this worker holds the cache equals the table; when partitions move (another
worker may change them meanwhile, or its changelog is replayed into this one) the owner
clears it (``clear``). Bounded: past ``limit`` rows it starts again empty.
"""
from __future__ import annotations

from typing import Any, MutableMapping, Protocol, TypeVar

_MISSING = object()


class Clearable(Protocol):
    def clear(self) -> None: ...


C = TypeVar("C", bound=Clearable)


def cleared_when_partitions_move(app: Any, cache: C) -> C:
    """``cache`` (returned), emptied whenever the worker's partitions are revoked or assigned:
    another worker may have changed a partition this one gets back, or its changelog is
    replayed into this one. For the caches an agent keeps of its own tables between batches."""

    def clear(sender: Any, *args: Any, **kwargs: Any) -> None:
        cache.clear()

    app.on_partitions_revoked.connect(clear)
    app.on_partitions_assigned.connect(clear)
    return cache


class RowCache:
    def __init__(self, table: MutableMapping[bytes, Any], limit: int = 200_000) -> None:
        self.table = table
        self.limit = limit
        self.rows: dict[bytes, dict | None] = {}

    def get(self, key: bytes) -> dict | None:
        """A private copy of the row (None: no row), read from the table on the first call."""
        row = self.rows.get(key, _MISSING)
        if row is _MISSING:
            row = self.table.get(key)
            self._keep(key, row)
        return None if row is None else dict(row)  # type: ignore[arg-type]

    def put(self, key: bytes, row: dict) -> None:
        """Write the row to the table (and its changelog) and keep a copy."""
        self.table[key] = row
        self._keep(key, dict(row))

    def clear(self) -> None:
        self.rows.clear()

    def _keep(self, key: bytes, row: dict | None) -> None:
        if len(self.rows) >= self.limit:
            self.rows.clear()
        self.rows[key] = row
