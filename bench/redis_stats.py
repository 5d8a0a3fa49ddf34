"""Redis's own account of its time (``INFO commandstats``), diffed around a benchmark window.

The benchmark reads the Redis process's CPU from /proc (``bench/sysstats.py``); this says which
commands took it. Redis counts a script call (EVALSHA) with the time of everything it ran,
and each command the script ran on its own line as well: the script lines include the
command lines beneath them (the rest of a script's time is Lua itself).
"""
from __future__ import annotations

from typing import Any, Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

Stats = dict[str, tuple[int, int]]  # command -> (calls, microseconds)


async def command_stats(redis: Redis) -> Stats | None:
    """Calls and microseconds per command since the server started (or its last CONFIG
    RESETSTAT); None where the server does not answer (a cluster client, an error)."""
    try:
        info = await redis.info("commandstats")
    except (RedisError, OSError, TypeError):
        return None
    out: Stats = {}
    for key, value in info.items():
        if isinstance(key, str) and key.startswith("cmdstat_") and isinstance(value, Mapping):
            out[key[len("cmdstat_"):]] = (int(value.get("calls", 0)), int(value.get("usec", 0)))
    return out


def command_delta(before: Stats | None, after: Stats | None, top: int = 8) -> list[dict[str, Any]] | None:
    """The ``top`` commands by time between two snapshots: command, calls, seconds, us per call."""
    if before is None or after is None:
        return None
    used = []
    for cmd, (calls, usec) in after.items():
        c0, u0 = before.get(cmd, (0, 0))
        if calls > c0:
            used.append((usec - u0, calls - c0, cmd))
    used.sort(key=lambda u: -u[0])
    return [{"command": cmd, "calls": calls, "s": round(usec / 1e6, 2), "us_per_call": round(usec / calls, 1)}
            for usec, calls, cmd in used[:top]]


def command_line(rows: list[dict[str, Any]] | None) -> str:
    """``rows`` as one line of the report."""
    if not rows:
        return ""
    return "; ".join(f"{r['command']} {r['calls']:,} calls {r['s']} s ({r['us_per_call']} us each)" for r in rows)
