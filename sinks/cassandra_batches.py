"""Which Cassandra writes share an UNLOGGED batch (pure; ``sinks/cassandra.py`` sends them).

``plan_batches`` cuts a call's statements into batches: one replica group per batch,
never two statements on one row (a shared write timestamp would let a tombstone beat
an insert whatever their order), a statement without a known row alone. ``batch_limits``
fits batches under the server's batch warnings, ``estimate_bytes`` sizes a statement.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence, TypeVar

T = TypeVar("T")

# Batching defaults (CassandraStore fields). Cassandra warns about unlogged
# batches over more than `unlogged_batch_across_partitions_warn_threshold`
# partitions and over `batch_size_warn_threshold` bytes, and rejects batches
# over `batch_size_fail_threshold` (50 KiB by default): localenv/cassandra_server.py sets
# the warnings above these limits, see docs/operations.md.
BATCH_SIZE = 32  # statements per batch
BATCH_BYTES = 16 * 1024  # estimated payload per batch (values + per-statement overhead)
BATCH_CONCURRENCY = 32  # batches in flight per execute_many call (TL_CASSANDRA_BATCHES_IN_FLIGHT)
STATEMENT_OVERHEAD_BYTES = 24  # a rough per-row cost on top of the values (timestamps, flags)
# A call too small to fill its batches in flight is cut into smaller batches, down to this many
# statements each (``spread_statements``).
SPREAD_FLOOR = 8


def estimate_bytes(params: Sequence[Any]) -> int:
    """A rough size of one statement's mutation, to keep batches far below the server's limits."""
    size = STATEMENT_OVERHEAD_BYTES
    for value in params:
        if isinstance(value, str):
            size += len(value) if value.isascii() else len(value.encode())
        elif isinstance(value, (bytes, bytearray)):
            size += len(value)
        elif value is not None:
            size += 8
    return size


def spread_statements(n: int, max_statements: int, in_flight: int, floor: int = SPREAD_FLOOR) -> int:
    """Statements per batch for a call of ``n`` statements: ``max_statements`` when the call
    fills ``in_flight`` batches of that size anyway (throughput: fewer, fuller requests); else
    the call is spread over up to ``in_flight`` batches, but never fewer than ``floor``
    statements per batch (latency: a small call's batches run side by side).

    Why: an UNLOGGED batch across partitions takes ~0.15 ms longer per partition it holds: on an
    idle single node (2026-12-02) a batch of 32 rows in 32 partitions took 5.6 ms, of
    32 rows in one partition 1.1 ms, and stage 2's typical idle call - 75 rows, one tweet's
    deliveries - 13.2 ms as 3 batches of 32 and 8.9 ms as 10 of 8 (4: 9.6 ms; 16: 9.9 ms; 75
    single statements 21 ms: the driver's cost per request)."""
    if max_statements < 1 or in_flight < 1 or floor < 1:
        raise ValueError(f"need max_statements, in_flight, floor >= 1; got {max_statements}, {in_flight}, {floor}")
    wanted = -(-n // in_flight)  # ceil: the size at which n statements fill in_flight batches
    return min(max_statements, max(floor, wanted))


def plan_batches(
    items: Sequence[T],
    *,
    max_statements: int,
    max_bytes: int,
    row_of: Callable[[T], tuple | None],
    size_of: Callable[[T], int],
    group_of: Callable[[T], Hashable] | None = None,
    max_partitions: int | None = None,
) -> list[list[T]]:
    """Cut ``items`` into batches, in the order the batches were opened.

    * A batch holds items of one group (``group_of``: e.g. the replica set of
      the item's partition; ``None``: one group for all), at most
      ``max_statements`` items, at most ``max_partitions`` distinct partitions
      (a row key's first two fields, table and partition key) and at most
      ``max_bytes`` (by ``size_of``; an item larger than that travels alone).
    * No batch holds two items with the same ``row_of`` key: the later item
      closes the open batch of its group and opens a new one (rows of one key
      are always in one group, so the earlier item's batch comes first).
    * An item whose ``row_of`` is ``None`` is not batchable: it closes every
      open batch and becomes a batch of its own, so whatever came before it
      is submitted before it and whatever comes after, after it.

    Items keep their input order within each batch; a batch appears at the
    position where it was opened, so an item never lands in a batch that is
    submitted before the batch of an earlier item on the same row.
    """
    if max_statements < 1:
        raise ValueError(f"max_statements must be >= 1, got {max_statements}")
    if max_partitions is None:
        max_partitions = max_statements
    if max_partitions < 1:
        raise ValueError(f"max_partitions must be >= 1, got {max_partitions}")
    out: list[list[T]] = []
    # group -> [batch (also referenced from out), its rows, its partitions, its bytes]
    open_: dict[Hashable, list] = {}
    for item in items:
        row = row_of(item)
        if row is None:
            open_.clear()
            out.append([item])
            continue
        group = group_of(item) if group_of is not None else None
        size = size_of(item)
        partition = row[:2]
        current = open_.get(group)
        if current is not None:
            batch, rows, partitions, used = current
            if (
                len(batch) >= max_statements
                or row in rows
                or used + size > max_bytes
                or (partition not in partitions and len(partitions) >= max_partitions)
            ):
                current = None
        if current is None:
            current = open_[group] = [[], set(), set(), 0]
            out.append(current[0])
        current[0].append(item)
        current[1].add(row)
        current[2].add(partition)
        current[3] += size
    return out


_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_bytes(value: str) -> int | None:
    """A Cassandra data storage setting ("5KiB", "50KiB", "1MiB", "512B") in bytes; None if unreadable."""
    value = (value or "").strip()
    for unit in ("KiB", "MiB", "GiB", "B"):
        if value.endswith(unit) and value[: -len(unit)].strip().isdigit():
            return int(value[: -len(unit)]) * _UNITS[unit]
    return None


def batch_limits(server: dict[str, str], *, batch_size: int, batch_bytes: int) -> tuple[int, int]:
    """(partitions per batch, bytes per batch) that stay below the server's batch warnings.

    ``server`` maps setting names to values as ``system_views.settings`` shows
    them; a missing or unreadable one counts as Cassandra's default (10
    partitions, 5 KiB). Our byte estimate is rough, so half the server's
    figure is used.
    """
    try:
        partitions = int(server.get("unlogged_batch_across_partitions_warn_threshold", "10"))
    except ValueError:
        partitions = 10
    warn = parse_bytes(server.get("batch_size_warn_threshold", "")) or 5 * 1024
    return max(1, min(batch_size, partitions)), max(1024, min(batch_bytes, warn // 2))
