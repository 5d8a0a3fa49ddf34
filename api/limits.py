"""Rate limits of the HTTP services: named token buckets in Redis that answer 429 or let go.

Every limit is a :class:`Limiter`: a :class:`api.ratelimit.RedisTokenBucket` per subject
(a user id or a client address) shared by every process through Redis, the 429 problem
(``Retry-After`` and a ``detail`` saying the limit and when to retry), and a counter.

Redis is only a cache, so a limiter never turns a Redis outage into refused requests:
when Redis does not answer (down, timed out, out of memory) the request goes on - the
limit *fails open* - and ``<service>_rate_limit_unavailable_total{limit}`` counts it.
A limiter built with ``local_fallback`` (the per-address token-lookup limit, which guards
PostgreSQL) instead falls back to an in-process bucket with the same numbers, so each
process still bounds what it lets through on its own. After a failure the limiter does
not ask Redis again for ``BYPASS_S`` seconds, so a Redis that hangs does not add its
timeout to every request.

Keys: ``<TL_REDIS_PREFIX>ratelimit:<limit>:<subject>``, expiring once the bucket would be
full again.

:func:`request_address` is the client address a per-address limit is keyed by
(``policies.client_address``: the TCP peer, or with ``TL_TRUSTED_PROXIES`` the client
named by the trusted proxies' ``X-Forwarded-For``; IPv6 by /64).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from redis.asyncio import Redis
from starlette.requests import Request

from api.common import HttpMetrics
from api.errors import Problem
from api.ratelimit import RedisTokenBucket
from policies.client_address import address_key, client_address, parse_networks
from policies.ratelimit import LocalBuckets, retry_after_header
from settings import Settings
from sinks.redis_client import REDIS_ERRORS

log = logging.getLogger(__name__)

BYPASS_S = 2.0
LOCAL_MAX_SUBJECTS = 10_000


class Limiter:
    """One named limit. ``check(subject)`` returns, or raises a 429 :class:`Problem` whose
    detail is ``refusal(wait_s)``."""

    def __init__(
        self,
        redis: Redis,
        *,
        name: str,
        burst: float,
        rate_per_s: float,
        prefix: str,
        refusal: Callable[[int], str],
        metrics: HttpMetrics,
        on_limited: Callable[[], None],
        local_fallback: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.bucket = RedisTokenBucket(redis, burst=burst, rate_per_s=rate_per_s,
                                       prefix=f"{prefix}ratelimit:{name}:")
        self.refusal = refusal
        self.metrics = metrics
        self.on_limited = on_limited
        self.local = LocalBuckets(burst, rate_per_s, LOCAL_MAX_SUBJECTS) if local_fallback else None
        self.clock = clock
        self._bypass_until = 0.0
        self.last_error: str | None = None  # the last Redis failure, for logs and tests

    async def check(self, subject: int | str) -> None:
        now = self.clock()
        result = None
        if now >= self._bypass_until:
            try:
                result = await self.bucket.take(subject)
            except REDIS_ERRORS as exc:
                self._bypass_until = self.clock() + BYPASS_S
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                log.warning("rate limit %r: Redis unavailable (%s); %s for %.0f s", self.name, exc,
                            "in-process buckets" if self.local is not None else "not enforced", BYPASS_S)
        if result is None:
            self.metrics.rate_limit_unavailable.labels(self.name).inc()
            if self.local is None:
                return
            result = self.local.take(str(subject), now)
        if not result.allowed:
            self.on_limited()
            wait = retry_after_header(result.retry_after_s)
            raise Problem(429, self.refusal(wait), headers={"Retry-After": str(wait)})


def request_address(request: Request, settings: Settings) -> str:
    """The key of the client's address (see the module docstring)."""
    peer = request.client.host if request.client else None
    trusted = parse_networks(settings.trusted_proxies) if settings.trusted_proxies else ()
    forwarded = request.headers.getlist("x-forwarded-for") if trusted else []
    return address_key(client_address(peer, forwarded, trusted))


def token_lookup_limiter(redis: Redis, settings: Settings, metrics: HttpMetrics,
                         on_limited: Callable[[], None] = lambda: None) -> Limiter:
    """The per-address limit on bearer-token lookups in PostgreSQL (both services)."""
    burst, rate = settings.token_lookup_rate_burst, settings.token_lookup_rate_per_s

    def refusal(wait: int) -> str:
        return (f"too many requests with tokens this service has not seen yet from your address: at most "
                f"{burst} at once, refilled at {rate:g} per second; retry in {wait} s with a valid token")

    def limited() -> None:
        metrics.authentications.labels("limited").inc()
        on_limited()

    return Limiter(redis, name="token_lookup", burst=burst, rate_per_s=rate, prefix=settings.redis_prefix,
                   refusal=refusal, metrics=metrics, on_limited=limited, local_fallback=True)
