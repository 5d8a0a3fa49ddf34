"""The Snowflake worker-id lease statements, on a PostgreSQL connection of their own.

The ``snowflake_worker_leases`` table of the namespace's schema (``ops/schema.sql``) has
one row per id 0..1023 with ``holder``, a fencing generation ``epoch``, ``issue_after``
and ``expires_at``. Every statement is a single ``UPDATE`` timed by PostgreSQL's ``now()``:

- take: the lowest row whose ``expires_at`` has passed (``FOR UPDATE SKIP LOCKED``, so
  concurrent takers get different rows), ``epoch + 1``, ``issue_after`` := the old
  ``expires_at``, ``expires_at`` := ``now() + TTL`` (``TL_SNOWFLAKE_LEASE_TTL_S``, 60 s);
- renew (every TTL/3): only while ``holder`` and ``epoch`` are still ours; the expiry
  never moves back;
- release (shutdown): ``expires_at`` down to just after the last id issued.

Who runs them, and when, is ``post.worker_id``; what the answers allow is
``policies/worker_lease.py``.

Why a lease table and not session-level advisory locks (``pg_try_advisory_lock``): an
advisory lock lives exactly as long as the server-side session, which the holder cannot
observe. PostgreSQL drops it the moment the backend goes - a server restart or failover,
``pg_terminate_backend``, ``idle_session_timeout``, a TCP keepalive firing on the server
side - and another process can take the number at once, while the old holder, whose
half of the connection still looks open, keeps issuing ids until it next talks to the
server. Conversely a half-open connection can keep a dead holder's lock for as long as
the server's keepalive takes (hours by default). A lock has no expiry that the holder can
count down locally, and no generation to fence with. A row with a server-clock expiry
gives both: a bound the holder enforces on its own clock, and a record
(``issue_after``) of where the previous holder's ids end. The table is also durable
across a PostgreSQL restart, which a lock is not.

The lease has its own PostgreSQL connection (not the request pool, so a burst of requests
cannot starve renewals); a statement that does not answer within a few seconds (a
half-open connection) is abandoned and the connection reopened.
"""
from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from policies.worker_lease import Grant

TABLE = "snowflake_worker_leases"


def _ms(column: str) -> str:
    return f"(extract(epoch FROM {column}) * 1000)::bigint"


_RETURNING = (f"RETURNING l.worker_id, l.epoch, {_ms('l.issue_after')}, {_ms('l.expires_at')}, "
              f"{_ms('now()')}")
_TTL = "date_trunc('milliseconds', now()) + %(ttl_ms)s * interval '1 millisecond'"

TAKE_SQL = f"""
UPDATE {TABLE} AS l
   SET holder = %(holder)s,
       epoch = l.epoch + 1,
       issue_after = greatest(l.expires_at, l.issue_after),
       expires_at = {_TTL},
       taken_at = now(),
       renewed_at = now()
 WHERE l.worker_id = (SELECT worker_id FROM {TABLE}
                       WHERE expires_at < now()
                       ORDER BY worker_id
                       LIMIT 1
                       FOR UPDATE SKIP LOCKED)
{_RETURNING}
"""

RENEW_SQL = f"""
UPDATE {TABLE} AS l
   SET expires_at = greatest(l.expires_at, {_TTL}),
       renewed_at = now()
 WHERE l.worker_id = %(worker_id)s AND l.holder = %(holder)s AND l.epoch = %(epoch)s
{_RETURNING}
"""

# Down to just after the last id issued (never up): the next holder may start at once.
RELEASE_SQL = f"""
UPDATE {TABLE} AS l
   SET expires_at = least(l.expires_at,
                          greatest(date_trunc('milliseconds', now()),
                                   'epoch'::timestamptz + %(after_ms)s * interval '1 millisecond'))
 WHERE l.worker_id = %(worker_id)s AND l.holder = %(holder)s AND l.epoch = %(epoch)s
"""

HOLDER_SQL = f"SELECT holder, epoch, {_ms('expires_at')} FROM {TABLE} WHERE worker_id = %s"


def _grant(row: Any) -> Grant:
    return Grant(worker_id=int(row[0]), epoch=int(row[1]), issue_after_ms=int(row[2]),
                 expires_at_ms=int(row[3]), db_now_ms=int(row[4]))


class PostgresLeases:
    """The lease statements on one dedicated PostgreSQL connection (opened on demand,
    dropped after any error). A statement that does not answer within
    ``statement_timeout_s`` is abandoned - cancelled in the background, not awaited: a
    cancelled psycopg query waits seconds for its server-side cancel, which a half-open
    connection never answers - and its connection dropped; TimeoutError is raised."""

    def __init__(self, dsn: str, connect_kwargs: dict[str, Any] | None = None, *,
                 statement_timeout_s: float = 5.0, connect_timeout_s: int = 3) -> None:
        self._dsn = dsn
        self.statement_timeout_s = statement_timeout_s
        self._kwargs = {
            "autocommit": True,
            "connect_timeout": connect_timeout_s,
            # Notice a dead peer on its own, too (Linux): keepalives, and data left
            # unacknowledged for 10 s drops the connection.
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 2,
            "tcp_user_timeout": 10_000,
            **(connect_kwargs or {}),
        }
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _fetch(self, sql: str, params: Any) -> tuple[Any, int]:
        """(first row or None, rowcount) of one statement, within the timeout."""
        task = asyncio.ensure_future(self._execute(sql, params))
        done, _ = await asyncio.wait({task}, timeout=self.statement_timeout_s)
        if not done:
            task.cancel()
            task.add_done_callback(_consume)
            self.reset()
            raise TimeoutError(f"PostgreSQL did not answer within {self.statement_timeout_s:g} s")
        return task.result()

    async def _execute(self, sql: str, params: Any) -> tuple[Any, int]:
        conn = self._conn
        try:
            if conn is None or conn.closed:
                conn = self._conn = await psycopg.AsyncConnection.connect(self._dsn, **self._kwargs)
            cur = await conn.execute(sql, params)
            row = await cur.fetchone() if cur.description is not None else None
            return row, cur.rowcount
        except BaseException:
            self._drop(conn)
            raise

    def _drop(self, conn: "psycopg.AsyncConnection[Any] | None") -> None:
        if conn is None:
            return
        if self._conn is conn:
            self._conn = None
        if not conn.closed:
            task = asyncio.get_running_loop().create_task(conn.close())
            task.add_done_callback(_consume)

    def reset(self) -> None:
        """Drop the connection: the next statement opens a new one."""
        self._drop(self._conn)

    async def take(self, holder: str, ttl_s: float) -> Grant | None:
        row, _ = await self._fetch(TAKE_SQL, {"holder": holder, "ttl_ms": int(ttl_s * 1000)})
        return None if row is None else _grant(row)

    async def renew(self, grant: Grant, holder: str, ttl_s: float) -> Grant | None:
        row, _ = await self._fetch(RENEW_SQL, {"worker_id": grant.worker_id, "holder": holder,
                                               "epoch": grant.epoch, "ttl_ms": int(ttl_s * 1000)})
        return None if row is None else _grant(row)

    async def holder_of(self, worker_id: int) -> tuple[str, int, int] | None:
        """(holder, epoch, expires_at ms) of a worker id's row."""
        row, _ = await self._fetch(HOLDER_SQL, (worker_id,))
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]))

    async def release(self, grant: Grant, holder: str, after_ms: int) -> bool:
        _, count = await self._fetch(RELEASE_SQL, {"worker_id": grant.worker_id, "holder": holder,
                                                   "epoch": grant.epoch, "after_ms": after_ms})
        return count == 1

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()


def _consume(task: "asyncio.Task[Any]") -> None:
    if not task.cancelled():
        task.exception()
