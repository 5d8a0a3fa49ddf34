"""Snowflake worker ids for Post service processes, so that no two share one.

* ``TL_SNOWFLAKE_WORKER_ID`` >= 0: that id is used as is. The operator promises it is
  unique (e.g. one per pod ordinal).
* ``TL_SNOWFLAKE_WORKER_ID`` = -1 (default): the id is *leased* from Redis. The process
  scans ``n = 0..1023`` with ``SET snowflake:worker:<n> <instance> NX EX 60`` and keeps
  the first key it gets. A background task renews the lease every 20 s (an ``EXPIRE``
  that only succeeds while the key still holds our instance id, done in one Lua script),
  and shutdown deletes the key the same compare-and-delete way.

A lease is only trusted until ``last successful renewal + TTL - safety margin`` on the
process's monotonic clock. Past that (Redis unreachable for ~a minute, a long pause) the
process stops issuing ids, answering 503, until it holds a lease again - because by then
another process may legitimately have taken the same number. A process that took over a
number whose holder died starts at a later wall-clock millisecond than any id the dead
holder issued (the key lived for >= 60 s after its last renewal), so even a reused worker
id does not produce a colliding id unless the clocks of the two hosts differ by a minute.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Callable

from redis.asyncio import Redis

from policies.snowflake import MAX_WORKER_ID, SnowflakeGenerator

log = logging.getLogger(__name__)

KEY_PREFIX = "snowflake:worker:"
LEASE_TTL_S = 60
RENEW_EVERY_S = 20
# Stop trusting a lease this long before Redis would expire it.
SAFETY_MARGIN_S = 10

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class NoWorkerId(RuntimeError):
    """No worker id is currently held; ids cannot be issued."""


class WorkerIdSource:
    """Issues Snowflake ids under a fixed or leased worker id."""

    def __init__(
        self,
        redis: Redis,
        *,
        fixed_worker_id: int = -1,
        epoch_ms: int,
        instance: str | None = None,
        ttl_s: int = LEASE_TTL_S,
        renew_every_s: float = RENEW_EVERY_S,
        safety_margin_s: float = SAFETY_MARGIN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fixed_worker_id > MAX_WORKER_ID:
            raise ValueError(f"TL_SNOWFLAKE_WORKER_ID must be <= {MAX_WORKER_ID}")
        self._redis = redis
        self._fixed = fixed_worker_id >= 0
        self._epoch_ms = epoch_ms
        self.instance = instance or instance_name()
        self._ttl_s = ttl_s
        self._renew_every_s = renew_every_s
        self._margin_s = min(safety_margin_s, ttl_s / 2)
        self._clock = clock
        self._generator: SnowflakeGenerator | None = None
        self._valid_until = float("inf")
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        if self._fixed:
            self._generator = SnowflakeGenerator(fixed_worker_id, epoch_ms=epoch_ms)

    # --- state --------------------------------------------------------------------
    @property
    def leased(self) -> bool:
        return not self._fixed

    @property
    def worker_id(self) -> int | None:
        if self._generator is None or self._clock() >= self._valid_until:
            return None
        return self._generator.worker_id

    def next_id(self) -> int:
        gen = self._generator
        if gen is None or self._clock() >= self._valid_until:
            reason = f" ({self.last_error})" if self.last_error else ""
            raise NoWorkerId(f"no Snowflake worker id is leased from Redis{reason}")
        return gen.next_id()

    def state(self) -> dict[str, object]:
        wid = self.worker_id
        return {
            "ok": wid is not None,
            "worker_id": wid,
            "mode": "fixed" if self._fixed else "leased",
            **({"error": self.last_error} if wid is None and self.last_error else {}),
        }

    # --- leasing ------------------------------------------------------------------
    def _key(self, n: int) -> str:
        return f"{KEY_PREFIX}{n}"

    async def acquire(self) -> int:
        """Lease the lowest free worker id, or raise NoWorkerId."""
        if self._fixed:
            assert self._generator is not None
            return self._generator.worker_id
        started = self._clock()
        for n in range(MAX_WORKER_ID + 1):
            if await self._redis.set(self._key(n), self.instance, nx=True, ex=self._ttl_s):
                # Keep the old generator if we got the same number back: its logical
                # clock guarantees ids keep increasing.
                if self._generator is None or self._generator.worker_id != n:
                    self._generator = SnowflakeGenerator(n, epoch_ms=self._epoch_ms)
                self._valid_until = started + self._ttl_s - self._margin_s
                self.last_error = None
                log.info("leased snowflake worker id %d as %s", n, self.instance)
                return n
        self.last_error = f"all {MAX_WORKER_ID + 1} worker ids are leased"
        raise NoWorkerId(self.last_error)

    async def renew(self) -> bool:
        """Extend our lease; False (and ids stop) if it was lost."""
        if self._fixed:
            return True
        gen = self._generator
        if gen is None:
            return False
        started = self._clock()
        ok = await self._redis.eval(_RENEW, 1, self._key(gen.worker_id), self.instance, self._ttl_s)
        if ok:
            self._valid_until = started + self._ttl_s - self._margin_s
            return True
        log.warning("lost the lease on snowflake worker id %d", gen.worker_id)
        self._valid_until = 0.0
        return False

    async def release(self) -> None:
        if self._fixed or self._generator is None:
            return
        wid = self._generator.worker_id
        self._valid_until = 0.0
        try:
            await self._redis.eval(_RELEASE, 1, self._key(wid), self.instance)
        except Exception as exc:  # shutdown must go on; the key expires by itself
            log.warning("could not release snowflake worker id %d: %s", wid, exc)

    async def _maintain_once(self) -> None:
        try:
            # renew() re-validates a lease that is still ours even if it went stale
            # locally (Redis was unreachable for a while but the key survived).
            if not await self.renew():
                await self.acquire()
        except NoWorkerId:
            pass
        except Exception as exc:
            self.last_error = f"Redis: {exc.__class__.__name__}: {exc}"
            log.warning("snowflake worker id lease: %s", self.last_error)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every_s if self.worker_id is not None else 2.0)
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
