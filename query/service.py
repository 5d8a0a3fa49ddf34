"""The query service: the read side of the home timeline, over HTTP.

Stateless FastAPI app over the projections the Faust agents maintain (Redis,
Cassandra) and the accounts of the Post service (PostgreSQL ``users``). It
writes nothing but caches and, for readers, ``user_active`` events.

Endpoints (ids are decimal strings in JSON and in paths)::

    GET /v1/users/{user_id}/timelines/home?limit=50&cursor=...   (Bearer, own timeline only)
    GET /v1/users/{user_id}/tweets?limit=50&cursor=...           (public; a token, if sent, must be valid)
    GET /healthz                                                 -> 200 / 503 with each dependency
    GET /metrics                                                 -> Prometheus text

A page is ``{"data": [{"tweet_id", "author_id", "author_handle", "text", "created_at"}],
"meta": {"result_count", "next_cursor", "source"}}``, newest first. ``next_cursor`` is
opaque (it means "ids strictly below N", so tweets that arrive later never shift the
next page) and null at the real end. ``source`` says where the materialized part of a
home page came from: ``cache`` (Redis), ``store`` (Cassandra) or ``rebuilt`` (a stale
timeline - its owner was inactive - merged from the followees' own tweets while stage 2
rebuilds it). ``author_handle`` is null for authors without an account (events from
outside producers); ``created_at`` is ISO-8601 UTC.

Reading a home timeline counts as activity: at most once per 5 minutes per user a
``user_active`` event goes to the activity topic, so stage 2 resumes deliveries (and
rebuilds a stale timeline). Errors are RFC 9457 problem details (``api.errors``);
authentication is the Post service's bearer tokens (``api.auth``). Reads are
rate-limited per reader (a token bucket in Redis, shared by every process:
``TL_READ_RATE_BURST`` reads at once, refilled at ``TL_READ_RATE_PER_S``; anonymous
author-timeline reads per client address): over it, 429 with ``Retry-After``. Bearer
tokens are checked as in the Post service (``api.auth``): unknown tokens are cached
negatively, and token lookups in PostgreSQL are limited per client address before they
are made (``TL_TOKEN_LOOKUP_RATE_*``). The client address is the TCP peer, or behind
proxies listed in ``TL_TRUSTED_PROXIES`` the client their ``X-Forwarded-For`` names
(``api.limits.request_address``); behind an unlisted proxy every client shares the
proxy's address and its per-address limits.

Run: ``python -m query.service [--host 127.0.0.1] [--port 8082]``.
"""
from __future__ import annotations

import logging
import time
from typing import Annotated

import redis.exceptions
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from api.auth import authenticate
from api.body import parse_id
from api.common import build_app, health_response, serve
from api.dependencies import install_dependency_errors
from api.errors import Problem
from api.limits import request_address
from api.openapi import Health, id_path, operation
from api.ratelimit import RateLimited
from policies.ratelimit import retry_after_header
from query.deps import QueryResources, get_query_resources, install_cassandra_errors
from query.metrics import QueryMetrics
from query.page import Page
from query.params import PAGE_PARAMS, PageOut, parse_cursor, parse_limit, render_page_json
from settings import Settings, get_settings

log = logging.getLogger("query.service")

DEFAULT_PORT = 8082


async def _page_response(res: QueryResources, timeline: str, page: Page, started: float) -> Response:
    handles = await res.handles.lookup(t.author_id for t in page.tweets)
    body = render_page_json(page.tweets, handles, page.next_below, page.source)
    res.metrics.observe_read(timeline, page.source, time.perf_counter() - started, page.stats)
    return Response(body, media_type="application/json")


router = APIRouter()


@router.get("/v1/users/{user_id}/timelines/home", **operation(
    ok=PageOut, params=PAGE_PARAMS, bearer="required", problems=(400, 401, 403, 422, 429, 503)))
async def home_timeline(request: Request, user_id: Annotated[str, id_path("The caller's own user id")]) -> Response:
    res = get_query_resources(request)
    caller = await authenticate(request)
    owner = parse_id(user_id, "user_id")
    if owner != caller:
        raise Problem(
            403,
            f"you are authenticated as user {caller}; a home timeline can only be read by its owner "
            f"(requested: user {owner}). Use /v1/users/{caller}/timelines/home",
        )
    limit = parse_limit(request.query_params)
    below = parse_cursor(request.query_params)
    started = time.perf_counter()
    reader = res.reader()
    # The rate-limit token is taken in the read's first Redis round trip.
    try:
        page = await reader.page(owner, limit=limit, below=below, gate=(res.limiter, f"user:{caller}"))
    except RateLimited as exc:
        raise _refusal(res, "home", exc.result.retry_after_s) from None
    await res.activity.touch(owner)  # one Redis command at most every few minutes per user
    return await _page_response(res, "home", page, started)


@router.get("/v1/users/{user_id}/tweets", **operation(
    ok=PageOut, params=PAGE_PARAMS, bearer="optional", problems=(400, 401, 422, 429, 503)))
async def user_tweets(request: Request, user_id: Annotated[str, id_path("The author")]) -> Response:
    res = get_query_resources(request)
    caller = None
    if request.headers.get("authorization") is not None:
        caller = await authenticate(request)  # optional, but a token that is sent must be valid
    author = parse_id(user_id, "user_id")
    limit = parse_limit(request.query_params)
    below = parse_cursor(request.query_params)
    started = time.perf_counter()
    client = request_address(request, res.settings)
    await _rate_limit(res, "author", f"user:{caller}" if caller is not None else f"addr:{client}")
    page = await res.reader().author_page(author, limit=limit, below=below)
    return await _page_response(res, "author", page, started)


async def _rate_limit(res: QueryResources, timeline: str, subject: str) -> None:
    """429 once the reader's token bucket is empty. Fails open: with Redis unreachable the
    read goes on (and degrades as the reader does), it is not refused."""
    try:
        result = await res.limiter.take(subject)
    except redis.exceptions.RedisError as exc:
        log.warning("read rate limit unavailable: %s", exc)
        return
    if not result.allowed:
        raise _refusal(res, timeline, result.retry_after_s)


def _refusal(res: QueryResources, timeline: str, retry_after_s: float) -> Problem:
    """The 429 of a read the reader's bucket refused (counted)."""
    res.metrics.rate_limited.labels(timeline).inc()
    wait = retry_after_header(retry_after_s)
    settings = res.settings
    return Problem(
        429,
        f"rate limit exceeded: at most {settings.read_rate_burst} reads at once, refilled at "
        f"{settings.read_rate_per_s:g} per second; retry in {wait} s",
        headers={"Retry-After": str(wait)},
    )


@router.get("/healthz", **operation(ok=Health, problems=(503,)))
async def healthz(request: Request) -> Response:
    return health_response(await get_query_resources(request).health())


# --- app -------------------------------------------------------------------------------


def _resources(app: FastAPI) -> QueryResources:
    return QueryResources.create(app.state.settings, metrics=app.state.metrics)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The query service as an ASGI app. Its lifespan opens (and closes) the connections."""
    settings = settings or get_settings()
    return build_app(
        title="Home timeline - query service",
        settings=settings,
        resources=_resources,
        router=router,
        metrics=QueryMetrics(),
        error_handlers=[install_dependency_errors, install_cassandra_errors],
    )


def main(argv: list[str] | None = None) -> None:
    serve(create_app, prog="python -m query.service", service="query", description=__doc__.splitlines()[0],
          default_port=DEFAULT_PORT, argv=argv)


if __name__ == "__main__":
    main()
