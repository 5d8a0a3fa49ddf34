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
authentication is the Post service's bearer tokens (``api.auth``).

Run: ``python -m api.query_service [--host 127.0.0.1] [--port 8082]``.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from api import errors
from api.auth import authenticate
from api.body import BodyLimitMiddleware, parse_id
from api.deps import install_dependency_errors
from api.errors import Problem
from api.query_deps import QueryResources, get_query_resources, install_cassandra_errors
from api.query_metrics import QueryMetrics, QueryMetricsMiddleware
from api.query_params import parse_cursor, parse_limit, render_page
from settings import Settings, get_settings
from sinks.reader import Page

log = logging.getLogger("api.query_service")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8082


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


async def _page_response(res: QueryResources, timeline: str, page: Page, started: float) -> Response:
    handles = await res.handles.lookup(t.author_id for t in page.tweets)
    body = render_page(page.tweets, handles, page.next_below, page.source)
    res.metrics.observe_read(timeline, page.source, time.perf_counter() - started, page.stats)
    return _json(body)


router = APIRouter()


@router.get("/v1/users/{user_id}/timelines/home")
async def home_timeline(request: Request, user_id: str) -> Response:
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
    # The activity mark (one Redis command) overlaps the read.
    page, _ = await asyncio.gather(reader.page(owner, limit=limit, below=below), res.activity.touch(owner))
    return await _page_response(res, "home", page, started)


@router.get("/v1/users/{user_id}/tweets")
async def user_tweets(request: Request, user_id: str) -> Response:
    res = get_query_resources(request)
    if request.headers.get("authorization") is not None:
        await authenticate(request)  # optional, but a token that is sent must be valid
    author = parse_id(user_id, "user_id")
    limit = parse_limit(request.query_params)
    below = parse_cursor(request.query_params)
    started = time.perf_counter()
    page = await res.reader().author_page(author, limit=limit, below=below)
    return await _page_response(res, "author", page, started)


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    checks = await get_query_resources(request).health()
    down = sorted(name for name, check in checks.items() if not check.get("ok") and check.get("required"))
    if down:
        return errors.problem_response(
            503, f"degraded: {', '.join(down)} unavailable", slug="unhealthy", checks=checks,
            headers={"Retry-After": "5"},
        )
    return _json({"status": "ok", "checks": checks})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return request.app.state.metrics.response()


# --- app -------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    res = QueryResources.create(app.state.settings, metrics=app.state.metrics)
    await res.start()
    app.state.resources = res
    try:
        yield
    finally:
        await res.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The query service as an ASGI app. Its lifespan opens (and closes) the connections."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Home timeline - query service",
        version="1",
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = QueryMetrics()
    app.router.redirect_slashes = False
    errors.install(app)
    install_dependency_errors(app)
    install_cassandra_errors(app)
    app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(QueryMetricsMiddleware, metrics=app.state.metrics)
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m api.query_service", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(get_settings()), host=args.host, port=args.port, log_level=args.log_level,
                proxy_headers=False, server_header=False)


if __name__ == "__main__":
    main()
