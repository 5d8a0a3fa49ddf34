"""Bearer tokens: issued at signup, stored only as SHA-256 hashes in PostgreSQL.

A token is ``secrets.token_urlsafe(32)`` (256 random bits). The ``users`` table keeps
``sha256(token)`` in ``token_hash`` (unique index), so a leaked database does not leak
tokens and a lookup is one index probe. A missing or wrong token is 401 with
``WWW-Authenticate: Bearer ...`` (RFC 6750).

Garbage tokens cannot exhaust PostgreSQL (:class:`TokenAuthenticator`, one per service
process, used by both services):

* Tokens that are not 16-200 base64url characters are refused without any lookup.
* Two in-process caches, bounded LRUs keyed by the token's hash: valid tokens
  (``TOKEN_CACHE_MAX``, ``TL_TOKEN_CACHE_TTL_S``) and unknown tokens
  (``NEGATIVE_CACHE_MAX``, ``TL_TOKEN_NEGATIVE_TTL_S``). A flood of garbage only evicts
  garbage. A token deleted from PostgreSQL (revoked) keeps working in a process that
  cached it for at most ``TL_TOKEN_CACHE_TTL_S`` (60 s by default).
* Concurrent requests with the same uncached token share one lookup.
* Every lookup that would reach PostgreSQL first takes a token from the client address's
  bucket (``TL_TOKEN_LOOKUP_RATE_BURST`` / ``_PER_S``, ``api.limits``): past it, 429
  with ``Retry-After``, and PostgreSQL is not asked. So PostgreSQL sees at most
  burst + rate x seconds token lookups per client address, whatever the request rate;
  with Redis down each process applies that bound on its own.

A PostgreSQL failure is not cached (the request answers 503, the next one asks again).
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from contextlib import AbstractAsyncContextManager
from typing import Any, Callable, Protocol

from fastapi import Request
from redis.asyncio import Redis

from api.common import HttpMetrics
from api.errors import Problem
from api.inflight import SharedFetches
from api.limits import request_address, token_lookup_limiter
from api.observe import note_user
from policies.ttl_cache import TtlLru
from settings import Settings

REALM = 'Bearer realm="timeline"'
TOKEN_CACHE_MAX = 10_000
NEGATIVE_CACHE_MAX = 50_000
# token_urlsafe output: base64url without padding. Anything else cannot be ours.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,200}", re.ASCII)

_UNKNOWN = 0  # the negative cache's value


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = REALM + (f', error="{error}"' if error else "")
    return Problem(401, detail, headers={"WWW-Authenticate": challenge})


class TokenAuthenticator:
    """Bearer token -> user id, with the caches, the shared lookups and the per-address
    lookup limit of the module docstring. ``pg_conn()`` yields a PostgreSQL connection."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        pg_conn: Callable[[], AbstractAsyncContextManager[Any]],
        metrics: HttpMetrics,
        *,
        on_limited: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.pg_conn = pg_conn
        self.metrics = metrics
        self.clock = clock
        self.valid: TtlLru[bytes, int] = TtlLru(TOKEN_CACHE_MAX, settings.token_cache_ttl_s)
        self.unknown: TtlLru[bytes, int] = TtlLru(NEGATIVE_CACHE_MAX, settings.token_negative_ttl_s)
        self.limiter = token_lookup_limiter(redis, settings, metrics, on_limited)
        self._inflight: SharedFetches[bytes, int | None] = SharedFetches()
        self.lookups = 0  # PostgreSQL lookups made by this process

    async def user_for_token(self, token: str, address: Callable[[], str]) -> int | None:
        """The user id of ``token``, None if PostgreSQL does not know it; 429 (Problem) if the
        client address ``address()`` returns (called only when a lookup is needed) has used up
        its lookups."""
        digest = hash_token(token)
        now = self.clock()
        user_id = self.valid.get(digest, now)
        if user_id is not None:
            self.metrics.authentications.labels("cached").inc()
            return user_id
        if self.unknown.get(digest, now) is not None:
            self.metrics.authentications.labels("cached_unknown").inc()
            return None
        pending = self._inflight.get(digest)
        if pending is not None:
            self.metrics.authentications.labels("joined").inc()
            return await asyncio.shield(pending)
        await self.limiter.check(address())
        pending = self._inflight.get(digest)  # another request may have started it meanwhile
        if pending is not None:
            self.metrics.authentications.labels("joined").inc()
            return await asyncio.shield(pending)
        return await asyncio.shield(self._inflight.start([digest], self._lookup(digest)))

    async def _lookup(self, digest: bytes) -> int | None:
        self.lookups += 1
        async with self.pg_conn() as conn:
            cur = await conn.execute("SELECT user_id FROM users WHERE token_hash = %s", (digest,))
            row = await cur.fetchone()
        now = self.clock()
        if row is None:
            self.unknown.put(digest, _UNKNOWN, now)
            self.metrics.authentications.labels("looked_up_unknown").inc()
            return None
        self.valid.put(digest, int(row[0]), now)
        self.metrics.authentications.labels("looked_up").inc()
        return int(row[0])


class Authenticating(Protocol):
    """What :func:`authenticate` needs of a service's resources (``app.state.resources``):
    each service's resources hold its settings and its one :class:`TokenAuthenticator`."""

    settings: Settings
    auth: TokenAuthenticator


async def authenticate(request: Request) -> int:
    """FastAPI dependency: the caller's user id, or 401."""
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        raise _unauthorized(
            "missing Authorization header; send 'Authorization: Bearer <token>' "
            "with the token returned by POST /v1/users"
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _unauthorized(
            f"Authorization scheme {scheme[:20]!r} is not supported; use 'Bearer <token>'",
            "invalid_request",
        )
    token = token.strip()
    if not token:
        raise _unauthorized("Authorization header has no token after 'Bearer'", "invalid_request")
    if not _TOKEN_RE.fullmatch(token):
        raise _unauthorized("bearer token is malformed", "invalid_token")
    res: Authenticating = request.app.state.resources
    user_id = await res.auth.user_for_token(token, lambda: request_address(request, res.settings))
    if user_id is None:
        raise _unauthorized("bearer token is not valid", "invalid_token")
    note_user(request, user_id)
    return user_id
