"""The query service: the read side of the home timeline, over HTTP.

Stateless FastAPI app over the projections the Faust agents maintain (Redis,
Cassandra) and the accounts of the Post service (PostgreSQL ``users``). It
writes nothing but caches and, for readers, ``user_active`` events.

Endpoints (ids are decimal strings in JSON and in paths)::

    GET /v1/users/{user_id}/timelines/home?limit=50&cursor=...&since_id=...  (Bearer, own timeline only)
    GET /v1/users/{user_id}/timelines/home/count?since_id=...    (Bearer, own): {"count", "capped", ...}
    GET /v1/users/{user_id}/timelines/home/stream                (Bearer, own): Server-Sent Events (query/stream.py)
    GET /v1/users/{user_id}/tweets?limit=50&cursor=...&since_id=...  (public; a token, if sent, must be valid)
    GET /v1/users/{user_id}/tweets/count?since_id=...            (public, as above)
    GET|PUT /v1/users/{user_id}/markers[/home]                   (Bearer, own): read markers (query/markers.py)
    GET /healthz                                                 -> 200 / 503 with each dependency
    GET /metrics                                                 -> Prometheus text

A page is ``{"data": [{"tweet_id", "author_id", "author_handle", "text", "created_at"}],
"meta": {"result_count", "next_cursor", "source"}}``, newest first. ``next_cursor`` is
opaque (it means "ids strictly below N", so tweets that arrive later never shift the
next page) and null at the real end. ``since_id=N`` keeps only tweets newer than N (refresh
from the top): the newest ``limit`` of them, paged down with ``next_cursor`` (sent with the
same ``since_id``) until it is null, so a gap larger than ``limit`` is paged, never cut.
``.../count?since_id=N`` counts them (at most ``COUNT_MAX``; ``capped`` when there are more). ``source`` says where the materialized part of a
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

from fastapi import APIRouter, FastAPI, Request
from starlette.background import BackgroundTask
from starlette.responses import Response

from api.auth import authenticate
from api.body import parse_id
from api.common import DirectRoute, build_app, health_response, json_response, serve
from api.dependencies import install_dependency_errors
from api.errors import Problem
from api.limits import request_address
from api.openapi import Health, id_path, operation
from api.ratelimit import RateLimited
from policies.ratelimit import retry_after_header
from query.deps import QueryResources, get_query_resources, install_cassandra_errors
from query.markers import router as markers_router
from query.metrics import QueryMetrics
from query.page import Page
from query.params import (
    PAGE_PARAMS, SINCE_PARAM, CountOut, PageOut, parse_cursor, parse_limit, parse_since_id, render_page_json,
)
from query.stream import home_stream, router as stream_router
from settings import Settings, get_settings
from sinks.redis_client import REDIS_ERRORS

log = logging.getLogger("query.service")

DEFAULT_PORT = 8082
# A count of newer tweets (a badge) reads at most this many; more shows as "capped".
COUNT_MAX = 100


async def _page_response(res: QueryResources, timeline: str, page: Page, started: float) -> Response:
    handles = await res.handles.lookup(t.author_id for t in page.tweets)
    body = render_page_json(page.tweets, handles, page.next_below, page.source)
    res.metrics.observe_read(timeline, page.source, time.perf_counter() - started, page.stats)
    return Response(body, media_type="application/json", background=_after(page))


def _after(page: Page) -> BackgroundTask | None:
    """The page's cache work left for after the answer (a miss's fill): Starlette runs it once
    the body is sent, and the request's task ends after it (uvicorn counts it, a graceful
    shutdown waits for it; the connection's next request starts without waiting for it)."""
    return BackgroundTask(page.after) if page.after is not None else None


router = APIRouter()


async def home_owner(request: Request, user_id: str) -> int:
    """The caller, who must be the owner of the home timeline ``user_id`` (else 401 / 403)."""
    caller = await authenticate(request)
    owner = parse_id(user_id, "user_id")
    if owner != caller:
        raise Problem(
            403,
            f"you are authenticated as user {caller}; a home timeline can only be read by its owner "
            f"(requested: user {owner}). Use /v1/users/{caller}/timelines/home",
        )
    return owner


async def _home_page(res: QueryResources, owner: int, limit: int, below: int | None,
                     above: int) -> Page:
    # The rate-limit token is taken in the read's first Redis round trip.
    try:
        page = await res.reader().page(owner, limit=limit, below=below, above=above,
                                       gate=(res.limiter, f"user:{owner}"), fill_later=True)
    except RateLimited as exc:
        raise refusal(res, "home", exc.result.retry_after_s) from None
    await res.activity.touch(owner)  # one Redis command at most every few minutes per user
    return page


@router.get("/v1/users/{user_id}/timelines/home", **operation(
    ok=PageOut, params=[*PAGE_PARAMS, SINCE_PARAM], bearer="required", problems=(400, 401, 403, 422, 429, 503)))
async def home_timeline(request: Request, user_id: Annotated[str, id_path("The caller's own user id")]) -> Response:
    res = get_query_resources(request)
    owner = await home_owner(request, user_id)
    limit = parse_limit(request.query_params)
    below = parse_cursor(request.query_params)
    above = parse_since_id(request.query_params)
    started = time.perf_counter()
    page = await _home_page(res, owner, limit, below, above)
    return await _page_response(res, "home", page, started)


@router.get("/v1/users/{user_id}/timelines/home/count", **operation(
    ok=CountOut, params=[SINCE_PARAM], bearer="required", problems=(400, 401, 403, 422, 429, 503)))
async def home_count(request: Request, user_id: Annotated[str, id_path("The caller's own user id")]) -> Response:
    """How many tweets are newer than ``since_id`` (for a badge), counted to COUNT_MAX."""
    res = get_query_resources(request)
    owner = await home_owner(request, user_id)
    above = parse_since_id(request.query_params)
    page = await _home_page(res, owner, COUNT_MAX, None, above)
    return _count_response(above, page)


def _count_response(above: int, page: Page) -> Response:
    newest = page.tweets[0].tweet_id if page.tweets else None
    response = json_response({"since_id": str(above), "count": len(page.tweets),
                              "capped": page.next_below is not None,
                              "newest_id": None if newest is None else str(newest)})
    response.background = _after(page)
    return response


@router.get("/v1/users/{user_id}/tweets", **operation(
    ok=PageOut, params=[*PAGE_PARAMS, SINCE_PARAM], bearer="optional", problems=(400, 401, 422, 429, 503)))
async def user_tweets(request: Request, user_id: Annotated[str, id_path("The author")]) -> Response:
    started = time.perf_counter()
    res, page, _ = await _author_page(request, user_id, counting=False)
    return await _page_response(res, "author", page, started)


@router.get("/v1/users/{user_id}/tweets/count", **operation(
    ok=CountOut, params=[SINCE_PARAM], bearer="optional", problems=(400, 401, 422, 429, 503)))
async def user_tweets_count(request: Request, user_id: Annotated[str, id_path("The author")]) -> Response:
    _, page, above = await _author_page(request, user_id, counting=True)
    return _count_response(above, page)


async def _author_page(request: Request, user_id: str, *, counting: bool) -> tuple[QueryResources, Page, int]:
    res = get_query_resources(request)
    caller = None
    if request.headers.get("authorization") is not None:
        caller = await authenticate(request)  # optional, but a token that is sent must be valid
    author = parse_id(user_id, "user_id")
    limit = COUNT_MAX if counting else parse_limit(request.query_params)
    below = None if counting else parse_cursor(request.query_params)
    above = parse_since_id(request.query_params)
    client = request_address(request, res.settings)
    await _rate_limit(res, "author", f"user:{caller}" if caller is not None else f"addr:{client}")
    return res, await res.reader().author_page(author, limit=limit, below=below, above=above), above


async def _rate_limit(res: QueryResources, timeline: str, subject: str) -> None:
    """429 once the reader's token bucket is empty. Fails open: with Redis unreachable the
    read goes on (and degrades as the reader does), it is not refused."""
    try:
        result = await res.limiter.take(subject)
    except REDIS_ERRORS as exc:
        log.warning("read rate limit unavailable: %s", exc)
        return
    if not result.allowed:
        raise refusal(res, timeline, result.retry_after_s)


def refusal(res: QueryResources, timeline: str, retry_after_s: float) -> Problem:
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


# The routes of query/markers.py and query/stream.py, as this router's own (listed, matched in order).
router.routes.extend([*markers_router.routes, *stream_router.routes])


async def _home_timeline_direct(request: Request) -> Response:
    return await home_timeline(request, request.path_params["user_id"])


async def _home_stream_direct(request: Request) -> Response:
    return await home_stream(request, request.path_params["user_id"])


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
        # Nearly every request of this service is the first; the stream's every event is a send
        # through the layers around its response (ServiceApp; Starlette's and FastAPI's send
        # wrappers: the service's CPU per stream event 0.091-0.109 ms direct against 0.111-0.121,
        # 10,000 streams, 4 alternating runs each of bench/stream_events.py).
        direct=[DirectRoute("/v1/users/{user_id}/timelines/home", _home_timeline_direct, methods=["GET"]),
                DirectRoute("/v1/users/{user_id}/timelines/home/stream", _home_stream_direct, methods=["GET"])],
    )


def main(argv: list[str] | None = None) -> None:
    serve(create_app, prog="python -m query.service", service="query", description=__doc__.splitlines()[0],
          default_port=DEFAULT_PORT, argv=argv)


if __name__ == "__main__":
    main()
