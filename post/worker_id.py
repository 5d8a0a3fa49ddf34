"""Snowflake worker ids for Post service processes, so that no two ids ever collide.

* ``TL_SNOWFLAKE_WORKER_ID`` >= 0: that id is used as is. The operator promises it is
  unique (e.g. one per pod ordinal) and that no process leases it (mark its row taken:
  ``docs/events.md``).
* ``TL_SNOWFLAKE_WORKER_ID`` = -1 (default): the id is *leased* from PostgreSQL, a row of
  ``snowflake_worker_leases`` (the statements: ``post.leases``). :class:`WorkerIdSource`
  takes the lowest free row at start, renews it every TTL/3 (``TL_SNOWFLAKE_LEASE_TTL_S``,
  60 s) in a background task, takes another when it lost it or had none, and releases it
  at shutdown.

  The rules that make this safe are in ``policies/worker_lease.py``: the holder stops
  issuing ids TTL/6 before the row expires by its monotonic clock, measured from when it
  *sent* its last successful renewal; its ids' timestamps stay below the ``expires_at``
  PostgreSQL answered; a new holder's ids stay above ``issue_after``. So the ids of
  successive holders of one worker id are disjoint even when hosts' wall clocks
  disagree, a process is paused past its TTL, or a row is taken over by hand.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Callable

from api.common import cancel_task
from api.errors import describe
from policies.snowflake import MAX_WORKER_ID, IdWindowClosed, SnowflakeGenerator, wall_clock_ms
from policies.worker_lease import Grant, Held, LeaseTiming, trusted_until
from post.leases import PostgresLeases

log = logging.getLogger(__name__)


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class NoWorkerId(RuntimeError):
    """No worker id is currently held; ids cannot be issued."""


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
            log.warning("could not release snowflake worker id %d: %s", held.grant.worker_id, describe(exc))

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
            self.last_error = f"PostgreSQL error: {describe(exc)}"
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
        await cancel_task(self._task)
        self._task = None
        await self.release()
        if self._leases is not None:
            try:
                await asyncio.wait_for(self._leases.close(), 2.0)
            except (Exception, asyncio.TimeoutError):
                pass
