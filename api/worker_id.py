"""Snowflake worker ids for Post service processes, so that no two ids ever collide.

* ``TL_SNOWFLAKE_WORKER_ID`` >= 0: that id is used as is. The operator promises it is
  unique (e.g. one per pod ordinal) and that no process leases it (mark its row taken:
  ``docs/events.md``).
* ``TL_SNOWFLAKE_WORKER_ID`` = -1 (default): the id is *leased* from PostgreSQL, the
  ``snowflake_worker_leases`` table of the namespace's schema (``ops/schema.sql``): one
  row per id 0..1023 with ``holder``, a fencing generation ``epoch``, ``issue_after`` and
  ``expires_at``. Every statement is a single ``UPDATE`` timed by PostgreSQL's ``now()``:

  - take: the lowest row whose ``expires_at`` has passed (``FOR UPDATE SKIP LOCKED``, so
    concurrent takers get different rows), ``epoch + 1``, ``issue_after`` := the old
    ``expires_at``, ``expires_at`` := ``now() + TTL`` (``TL_SNOWFLAKE_LEASE_TTL_S``, 60 s);
  - renew (every TTL/3): only while ``holder`` and ``epoch`` are still ours; the expiry
    never moves back;
  - release (shutdown): ``expires_at`` down to just after the last id issued.

  The rules that make this safe are in ``policies/worker_lease.py``: the holder stops
  issuing ids TTL/6 before the row expires by its monotonic clock, measured from when it
  *sent* its last successful renewal; its ids' timestamps stay below the ``expires_at``
  PostgreSQL answered; a new holder's ids stay above ``issue_after``. So the ids of
  successive holders of one worker id are disjoint even when hosts' wall clocks
  disagree, a process is paused past its TTL, or a row is taken over by hand.

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
import logging
import os
import secrets
import socket
import time
from typing import Any, Callable

import psycopg

from policies.snowflake import MAX_WORKER_ID, IdWindowClosed, SnowflakeGenerator, wall_clock_ms
from policies.worker_lease import Grant, Held, LeaseTiming, trusted_until

log = logging.getLogger(__name__)

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


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class NoWorkerId(RuntimeError):
    """No worker id is currently held; ids cannot be issued."""


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


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


class WorkerIdSource:
    """Issues Snowflake ids under a fixed worker id or one leased from PostgreSQL."""

    def __init__(
        self,
        leases: PostgresLeases | None,
        *,
        fixed_worker_id: int = -1,
        epoch_ms: int,
        instance: str | None = None,
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if fixed_worker_id > MAX_WORKER_ID:
            raise ValueError(f"TL_SNOWFLAKE_WORKER_ID must be <= {MAX_WORKER_ID}")
        self._fixed = fixed_worker_id >= 0
        if not self._fixed and leases is None:
            raise ValueError("a leased worker id needs a lease store")
        self._leases = leases
        self._epoch_ms = epoch_ms
        self.instance = instance or instance_name()
        self._timing = timing or LeaseTiming()
        self._clock = clock  # monotonic: when to stop trusting a lease
        self._wall_clock = wall_clock  # Unix ms: the ids' timestamps
        self._generator: SnowflakeGenerator | None = None
        self._held: Held | None = None
        self._renew_failing = False
        self._lost: str | None = None  # why the last lease ended, until another is held
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        if self._fixed:
            self._generator = SnowflakeGenerator(fixed_worker_id, epoch_ms=epoch_ms, clock=wall_clock)

    # --- state --------------------------------------------------------------------
    @property
    def leased(self) -> bool:
        return not self._fixed

    @property
    def timing(self) -> LeaseTiming:
        return self._timing

    @property
    def held(self) -> Held | None:
        """The lease as last granted (None in fixed mode or when none is held)."""
        return self._held

    @property
    def worker_id(self) -> int | None:
        """The worker id ids are issued under right now, or None."""
        if self._fixed:
            assert self._generator is not None
            return self._generator.worker_id
        held = self._held
        if held is None or held.refusal(self._clock()) is not None:
            return None
        return held.grant.worker_id

    def _refusal(self) -> str:
        held = self._held
        reasons = [held.refusal(self._clock()) if held is not None else None, self._lost, self.last_error]
        said = "; ".join(r for r in reasons if r) or "none taken yet"
        return f"no Snowflake worker id is leased from PostgreSQL: {said}"

    def next_id(self) -> int:
        gen = self._generator
        if self._fixed:
            assert gen is not None
            return gen.next_id()
        held = self._held
        if gen is None or held is None or held.refusal(self._clock()) is not None:
            raise NoWorkerId(self._refusal())
        try:
            return gen.next_id(before_ms=held.grant.expires_at_ms)
        except IdWindowClosed as exc:
            why = held.grant.refusal(exc.ms) or str(exc)
            raise NoWorkerId(f"no Snowflake worker id is leased from PostgreSQL: cannot issue an id now, "
                             f"{why}") from None

    def state(self) -> dict[str, object]:
        wid = self.worker_id
        if self._fixed:
            return {"ok": True, "worker_id": wid, "mode": "fixed"}
        out: dict[str, object] = {"ok": wid is not None, "worker_id": wid, "mode": "leased"}
        held = self._held
        if held is not None:
            out["epoch"] = held.grant.epoch
            out["trusted_for_s"] = round(max(0.0, held.trusted_until - self._clock()), 1)
        if wid is None:
            out["error"] = self._refusal()
        elif self.last_error:
            out["error"] = self.last_error
        return out

    # --- leasing ------------------------------------------------------------------
    def _adopt(self, grant: Grant, sent_at: float) -> None:
        # Keep the generator if we got the same number back: its logical clock keeps ids
        # increasing. Either way, nothing at or below the previous holder's end.
        if self._generator is None or self._generator.worker_id != grant.worker_id:
            self._generator = SnowflakeGenerator(grant.worker_id, epoch_ms=self._epoch_ms, clock=self._wall_clock)
        self._generator.advance_past(grant.issue_after_ms)
        self._held = Held(grant, trusted_until(sent_at, self._timing))
        self.last_error = self._lost = None
        self._renew_failing = False

    async def acquire(self) -> int:
        """Take the lowest free worker id, or raise NoWorkerId."""
        if self._fixed:
            assert self._generator is not None
            return self._generator.worker_id
        assert self._leases is not None
        sent_at = self._clock()
        grant = await self._leases.take(self.instance, self._timing.ttl_s)
        if grant is None:
            self.last_error = f"all {MAX_WORKER_ID + 1} worker ids are leased"
            raise NoWorkerId(self._refusal())
        self._adopt(grant, sent_at)
        log.info("leased snowflake worker id %d (generation %d) as %s", grant.worker_id, grant.epoch,
                 self.instance)
        return grant.worker_id

    async def renew(self) -> bool:
        """Extend our lease; False (and ids stop at once) if it was taken over."""
        if self._fixed:
            return True
        held = self._held
        if held is None:
            return False
        assert self._leases is not None
        sent_at = self._clock()
        grant = await self._leases.renew(held.grant, self.instance, self._timing.ttl_s)
        if grant is not None:
            self._held = Held(held.grant.renewed(grant), trusted_until(sent_at, self._timing))
            self.last_error = None
            self._renew_failing = False
            return True
        self._held = None
        wid = held.grant.worker_id
        try:
            now_holder = await self._leases.holder_of(wid)
        except Exception:  # noqa: BLE001 - only for the message
            now_holder = None
        by = f" by {now_holder[0]!r} (generation {now_holder[1]})" if now_holder else ""
        self._lost = f"the lease on worker id {wid} (generation {held.grant.epoch}) was taken over{by}"
        self.last_error = None
        log.warning("lost snowflake worker id: %s", self._lost)
        return False

    async def release(self) -> None:
        held, self._held = self._held, None
        if self._fixed or held is None:
            return
        assert self._leases is not None and self._generator is not None
        last = self._generator.last_ms
        after_ms = 0 if last is None else last + 1
        try:
            await self._leases.release(held.grant, self.instance, after_ms)
        except Exception as exc:  # shutdown must go on; the row expires by itself
            log.warning("could not release snowflake worker id %d: %s", held.grant.worker_id, _describe(exc))

    async def _maintain_once(self) -> None:
        try:
            # renew() re-validates a lease that is still ours even if it went stale
            # locally (PostgreSQL was unreachable for a while but nobody took the row).
            if self._held is not None and await self.renew():
                return
            await self.acquire()
        except NoWorkerId:
            pass
        except Exception as exc:
            self._renew_failing = True
            self.last_error = f"PostgreSQL error: {_describe(exc)}"
            log.warning("snowflake worker id lease: %s", self.last_error)

    def _next_wait(self) -> float:
        if self.worker_id is None or self._renew_failing:
            return self._timing.retry_every_s()
        return self._timing.renew_every_s

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._next_wait())
            await self._maintain_once()

    async def start(self) -> None:
        """Acquire (best effort; retried in the background) and start renewing."""
        if self._fixed:
            return
        await self._maintain_once()
        self._task = asyncio.create_task(self._run(), name="snowflake-worker-lease")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.release()
        if self._leases is not None:
            try:
                await asyncio.wait_for(self._leases.close(), 2.0)
            except (Exception, asyncio.TimeoutError):
                pass
