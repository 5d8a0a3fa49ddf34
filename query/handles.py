"""Author handles for timeline pages, and ``user_active`` events for readers.

:class:`HandleCache`: handles come from PostgreSQL ``users`` (one batched query
for the authors of a page), cached in Redis (``<prefix>handle:<id>``, a string;
``""`` marks an id that has no account, e.g. an author whose events came from an
outside producer) and in a small in-process map. Handles never change, so the
only staleness is an account created after its id was looked up: negatives are
kept for ``miss_ttl_s`` only.

:class:`ActivityTracker`: reading a home timeline counts as activity. At most
once per ``throttle_s`` per user (``SET <prefix>active:<id> 1 NX EX``) a
``user_active`` event goes to ``settings.topic_activity`` (keyed by the user id),
in the background; if Kafka refuses it, the throttle key is dropped so the next
read tries again. Stage 2 rebuilds a stale timeline when it sees the event.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import Any, Callable, Iterable

from redis.asyncio import Redis

from api.inflight import SharedFetches
from api.kafka import KafkaGateway, KafkaUnavailable
from query.metrics import QueryMetrics
from schemas.events import UserActive
from sinks.redis_client import REDIS_ERRORS, is_cluster

log = logging.getLogger(__name__)

HANDLE_TTL_S = 24 * 3600
HANDLE_MISS_TTL_S = 60
LOCAL_TTL_S = 300.0
LOCAL_MAX = 100_000
ACTIVITY_THROTTLE_S = 300
RECHECK_S = 30.0
_UNKNOWN = b""


class HandleCache:
    def __init__(
        self,
        redis: Redis,
        pg_conn: Callable[[], AbstractAsyncContextManager[Any]],
        metrics: QueryMetrics,
        *,
        prefix: str,
        ttl_s: int = HANDLE_TTL_S,
        miss_ttl_s: int = HANDLE_MISS_TTL_S,
        local_ttl_s: float = LOCAL_TTL_S,
    ) -> None:
        self.redis = redis
        self.pg_conn = pg_conn
        self.metrics = metrics
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.miss_ttl_s = miss_ttl_s
        self.local_ttl_s = local_ttl_s
        self._local: dict[int, tuple[str | None, float]] = {}
        # id -> the fetch under way for it (``lookup``)
        self._inflight: SharedFetches[int, dict[int, str | None]] = SharedFetches()

    def key(self, user_id: int) -> str:
        return f"{self.prefix}handle:{user_id}"

    def _remember(self, user_id: int, handle: str | None, now: float) -> None:
        if len(self._local) >= LOCAL_MAX:
            self._local.clear()
        ttl = self.local_ttl_s if handle is not None else min(self.local_ttl_s, self.miss_ttl_s)
        self._local[user_id] = (handle, now + ttl)

    async def lookup(self, user_ids: Iterable[int]) -> dict[int, str | None]:
        """Handle per id (None: no account). At most one Redis and one PostgreSQL round trip.

        Concurrent lookups of the same id share one fetch (``_inflight``): a tweet that wakes
        many open streams at once (every follower's, a celebrity's tens of thousands) looks its
        author up once, not once per stream - those lookups queued for PostgreSQL connections
        and held stream events back by hundreds of milliseconds (live_bench, 10,000 streams).
        A caller that goes away does not cancel the fetch for the others (``api.inflight``)."""
        now = time.monotonic()
        out: dict[int, str | None] = {}
        wanted: list[int] = []
        waits: dict[asyncio.Task[dict[int, str | None]], list[int]] = {}
        for user_id in set(user_ids):
            hit = self._local.get(user_id)
            if hit is not None and hit[1] > now:
                out[user_id] = hit[0]
            elif (fetch := self._inflight.get(user_id)) is not None:
                waits.setdefault(fetch, []).append(user_id)
            else:
                wanted.append(user_id)
        known = len(out) + sum(len(ids) for ids in waits.values())  # waits: ids another lookup fetches
        if known:
            self.metrics.cache.labels("handle", "hit").inc(known)
        if wanted:
            waits[self._inflight.start(wanted, self._fetch(wanted, now))] = wanted
        for fetch, ids in waits.items():
            found = await asyncio.shield(fetch)
            for user_id in ids:
                out[user_id] = found[user_id]
        return out

    async def _fetch(self, wanted: list[int], now: float) -> dict[int, str | None]:
        """Handles of ``wanted`` (none in the local map): Redis, then PostgreSQL for the rest."""
        out: dict[int, str | None] = {}
        keys = [self.key(u) for u in wanted]
        try:  # on a cluster the keys are in many slots: one MGET per slot, concurrently
            cached = await (self.redis.mget_nonatomic(keys) if is_cluster(self.redis) else self.redis.mget(keys))
        except REDIS_ERRORS as exc:  # a cache: PostgreSQL has every handle (a master failing over)
            log.warning("handle lookup without Redis: %r", exc)
            cached, cache_ok = [None] * len(wanted), False
        else:
            cache_ok = True
        missing: list[int] = []
        for user_id, raw in zip(wanted, cached):
            if raw is None:
                missing.append(user_id)
                continue
            handle = raw.decode() if raw != _UNKNOWN else None
            out[user_id] = handle
            self._remember(user_id, handle, now)
        if out:
            self.metrics.cache.labels("handle", "hit").inc(len(out))
        if missing:
            self.metrics.cache.labels("handle", "miss").inc(len(missing))
            found = await self._from_postgres(missing)
            for user_id in missing:
                out[user_id] = found.get(user_id)
                self._remember(user_id, out[user_id], now)
            if cache_ok:
                await self._cache(missing, out)
        return out

    async def _cache(self, user_ids: list[int], handles: dict[int, str | None]) -> None:
        """Cache what PostgreSQL answered; best effort (the next lookup asks again)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    if handles[user_id] is None:
                        pipe.set(self.key(user_id), _UNKNOWN, ex=self.miss_ttl_s)
                    else:
                        pipe.set(self.key(user_id), handles[user_id], ex=self.ttl_s)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            log.warning("handles not cached: %r", exc)

    async def _from_postgres(self, user_ids: list[int]) -> dict[int, str]:
        async with self.pg_conn() as conn:
            cur = await conn.execute("SELECT user_id, handle FROM users WHERE user_id = ANY(%s)", (user_ids,))
            rows = await cur.fetchall()
        return {int(r[0]): str(r[1]) for r in rows}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ActivityTracker:
    def __init__(
        self,
        redis: Redis,
        kafka: KafkaGateway,
        metrics: QueryMetrics,
        *,
        topic: str,
        prefix: str,
        throttle_s: int = ACTIVITY_THROTTLE_S,
    ) -> None:
        self.redis = redis
        self.kafka = kafka
        self.metrics = metrics
        self.topic = topic
        self.prefix = prefix
        self.throttle_s = throttle_s
        self._tasks: set[asyncio.Task[None]] = set()
        # user -> monotonic time until which this process knows the throttle key is set
        self._recent: dict[int, float] = {}

    def key(self, user_id: int) -> str:
        return f"{self.prefix}active:{user_id}"

    async def touch(self, user_id: int) -> bool:
        """Record a read; True if a ``user_active`` event is being emitted. Never raises."""
        now = time.monotonic()
        if self._recent.get(user_id, 0.0) > now:  # this process set the key: skip the round trip
            self.metrics.activity.labels("throttled").inc()
            return False
        try:
            first = await self.redis.set(self.key(user_id), b"1", nx=True, ex=self.throttle_s)
        except REDIS_ERRORS as exc:
            log.warning("activity throttle for user %d unavailable: %s", user_id, exc)
            self.metrics.activity.labels("failed").inc()
            return False
        if len(self._recent) >= LOCAL_MAX:
            self._recent.clear()
        if not first:
            # Set by another process (or an earlier one): its expiry is unknown here, so
            # look again soon; an emission is at most RECHECK_S late.
            self._recent[user_id] = now + min(RECHECK_S, self.throttle_s)
            self.metrics.activity.labels("throttled").inc()
            return False
        self._recent[user_id] = now + self.throttle_s
        task = asyncio.get_running_loop().create_task(self._emit(user_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _emit(self, user_id: int) -> None:
        try:
            await self.kafka.produce(self.topic, UserActive(user_id=user_id, at=now_ms()))
        except Exception as exc:  # noqa: BLE001 - a background task: log, count, retry on the next read
            reason = exc.reason if isinstance(exc, KafkaUnavailable) else repr(exc)
            log.warning("user_active for user %d not emitted: %s", user_id, reason)
            self.metrics.activity.labels("failed").inc()
            self._recent.pop(user_id, None)
            try:
                await self.redis.delete(self.key(user_id))  # the next read tries again
            except REDIS_ERRORS:
                pass
            return
        self.metrics.activity.labels("emitted").inc()

    async def drain(self, timeout: float) -> None:
        """Wait for events still being emitted (at shutdown), then cancel the rest."""
        pending = set(self._tasks)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
