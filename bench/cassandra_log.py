"""What the local Cassandra node did in the background during a measurement, from its system.log.

A memtable flush or a compaction takes a core of this 2-core machine for up to seconds, and
the worker's writes wait behind it: the lag phase reports them beside its worst seconds so a
stall can be told from the pipeline's own queueing. Only what the node logs at INFO is seen:
``Completed flushing <path>`` and ``Compacted (<id>) ... to [<path>] ... in <n>ms``.
"""
from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

_STAMP = re.compile(r"\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_TABLE = re.compile(r"/data/([^/]+)/([^/-]+)-[0-9a-f]{32}/")
_COMPACTED = re.compile(r" - Compacted \([0-9a-f-]+\) .*?\bto \[(\S*?)[,\]].*? (\S+) to (\S+) \(.*?\) in ([\d,]+)ms")
_FLUSHED = re.compile(r" - Completed flushing (\S+)")


def _epoch(stamp: str) -> float:
    """The log's local time as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _table(path: str) -> str:
    m = _TABLE.search(path)
    if not m:
        return "?"
    keyspace, table = m.groups()
    return f"system.{table}" if keyspace.startswith("system") else table


def background_work(lines: Iterable[str], since: float, until: float) -> dict[str, Any]:
    """Flushes and compactions that ran (at least partly) between ``since`` and ``until``
    (epoch seconds): per table, and each compaction's start (s after ``since``), seconds and
    input size as logged."""
    flushes: dict[str, int] = {}
    compactions: list[dict[str, Any]] = []
    for line in lines:
        stamp = _STAMP.search(line)
        if not stamp:
            continue
        at = _epoch(stamp.group(1))
        if (m := _COMPACTED.search(line)) is not None:
            seconds = int(m.group(4).replace(",", "")) / 1000
            if at < since or at - seconds > until:
                continue
            compactions.append({"table": _table(m.group(1)), "start_s": round(at - seconds - since, 1),
                                "seconds": round(seconds, 2), "input": m.group(2)})
        elif (m := _FLUSHED.search(line)) is not None and since <= at <= until:
            table = _table(m.group(1))
            flushes[table] = flushes.get(table, 0) + 1
    return {"flushes": flushes, "compactions": compactions,
            "compaction_s": round(sum(c["seconds"] for c in compactions), 2)}


def node_background_work(log: Path | None, since: float, until: float) -> dict[str, Any] | None:
    """:func:`background_work` from the node's log file; None when there is none to read
    (servers not started by this checkout)."""
    if log is None:
        return None
    try:
        with log.open(errors="replace") as f:
            return background_work(f, since, until)
    except OSError:
        return None
