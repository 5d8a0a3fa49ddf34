"""Bearer tokens: issued at signup, stored only as SHA-256 hashes in PostgreSQL.

A token is ``secrets.token_urlsafe(32)`` (256 random bits). The ``users`` table keeps
``sha256(token)`` in ``token_hash`` (unique index), so a leaked database does not leak
tokens and a lookup is one index probe. A missing or wrong token is 401 with
``WWW-Authenticate: Bearer ...`` (RFC 6750).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time

from fastapi import Request

from api.deps import Resources, get_resources
from api.errors import Problem

REALM = 'Bearer realm="timeline"'
TOKEN_CACHE_TTL_S = 60.0
TOKEN_CACHE_MAX = 10_000
# token_urlsafe output: base64url without padding. Anything else cannot be ours.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,200}", re.ASCII)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = REALM + (f', error="{error}"' if error else "")
    return Problem(401, detail, headers={"WWW-Authenticate": challenge})


async def user_for_token(res: Resources, token: str) -> int | None:
    digest = hash_token(token)
    now = time.monotonic()
    hit = res.token_cache.get(digest)
    if hit is not None and hit[1] > now:
        return hit[0]
    async with res.pg_conn() as conn:
        cur = await conn.execute("SELECT user_id FROM users WHERE token_hash = %s", (digest,))
        row = await cur.fetchone()
    if row is None:
        return None
    if len(res.token_cache) >= TOKEN_CACHE_MAX:
        res.token_cache.clear()
    res.token_cache[digest] = (int(row[0]), now + TOKEN_CACHE_TTL_S)
    return int(row[0])


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
    user_id = await user_for_token(get_resources(request), token)
    if user_id is None:
        raise _unauthorized("bearer token is not valid", "invalid_token")
    return user_id
