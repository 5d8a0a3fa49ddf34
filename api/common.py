"""What the Post service and the query service share: the app skeleton, HTTP metrics,
the ``/healthz`` and ``/metrics`` answers, and the command-line entry point.

Each service keeps its routes, its resources and its own metrics class (a subclass of
:class:`HttpMetrics` named after the service: ``post_http_*`` or ``query_http_*``).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging.config
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Iterable, Protocol, Sequence

import orjson
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from starlette.responses import Response
from starlette.requests import Request as StarletteRequest
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api import errors
from api.body import BodyLimitMiddleware
from api.observe import ObserveMiddleware
from api.openapi import describe_app
from cpu_priority import raise_priority
from gc_tuning import GC_BUCKETS, GcPauses, tune_gc
from logs import dict_config
from settings import Settings, get_settings

DEFAULT_HOST = "127.0.0.1"


# --- metrics -----------------------------------------------------------------------------


class BoundLabels:
    """A labelled metric whose children are bound once per label values: prometheus_client's
    ``labels()`` validates, stringifies and locks on every call, several times per request.
    Everything else is the metric's own (attribute access passes through)."""

    __slots__ = ("metric", "_children")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[Any, ...], Any] = {}

    def labels(self, *values: Any) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)


class HttpMetrics:
    """Prometheus metrics on a registry of their own (one per app, so tests can build many
    apps in one process), exposed at ``GET /metrics``:
    ``<service>_http_requests_total{method,route,status}`` and
    ``<service>_http_request_seconds{method,route}``, and the bearer-token and rate-limit
    counters both services share (``api.auth``, ``api.limits``):
    ``<service>_authentications_total{outcome}`` (``cached``, ``cached_unknown``,
    ``joined``: answered without PostgreSQL; ``looked_up``, ``looked_up_unknown``: a
    PostgreSQL lookup; ``limited``: 429 from the per-address lookup limit) and
    ``<service>_rate_limit_unavailable_total{limit}`` (Redis did not answer a limiter, which
    then let the request through, or used its in-process fallback), and
    ``<service>_gc_pause_seconds{generation}`` (the garbage collector's pauses while the app
    runs: ``gc_tuning``). Subclasses add their own."""

    def __init__(self, service: str, buckets: Sequence[float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{service}_http_requests_total",
            "HTTP requests by route template, method and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{service}_http_request_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=tuple(buckets),
            registry=self.registry,
        )
        self.gc_pauses = Histogram(
            f"{service}_gc_pause_seconds",
            "Garbage collector pauses of the process, by generation (every request and stream waits meanwhile)",
            ["generation"], buckets=GC_BUCKETS, registry=self.registry,
        )
        self.authentications = Counter(
            f"{service}_authentications_total",
            "Bearer-token checks by outcome (from the caches, joined to a lookup in flight, "
            "looked up in PostgreSQL, refused by the per-address lookup limit)",
            ["outcome"],
            registry=self.registry,
        )
        self.rate_limit_unavailable = Counter(
            f"{service}_rate_limit_unavailable_total",
            "Rate-limit checks Redis did not answer (the request went on: fail open, or the "
            "in-process fallback bucket)",
            ["limit"],
            registry=self.registry,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        # Every labelled metric of a service (here and in subclasses) binds its children once.
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            value = BoundLabels(value)
        super().__setattr__(name, value)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


# --- responses ---------------------------------------------------------------------------


async def cancel_task(task: "asyncio.Task | None") -> None:
    """Cancel a background task of a service and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def health_response(checks: dict[str, dict[str, Any]]) -> Response:
    """200 with every check, or 503 naming the failed checks that are required (a check
    without a ``required`` flag is required)."""
    down = sorted(name for name, check in checks.items() if not check.get("ok") and check.get("required", True))
    if down:
        return errors.problem_response(
            503, f"degraded: {', '.join(down)} unavailable", slug="unhealthy", checks=checks,
            headers={"Retry-After": "5"},
        )
    return json_response({"status": "ok", "checks": checks})


async def metrics_endpoint(request: Request) -> Response:
    return request.app.state.metrics.response()


# --- the app and its entry point -----------------------------------------------------------


class DirectRoute(Route):
    """A plain Starlette route (``endpoint(request) -> Response``, no FastAPI parameter
    solving) for a service's hottest path, placed before the FastAPI route of the same path,
    which stays for the API description. Errors go through the app's exception handlers as
    for any route, and the request is counted and logged under the same route template
    (``api.observe`` reads ``scope["route"]``)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], *, methods: Sequence[str]) -> None:
        super().__init__(path, endpoint, methods=list(methods))
        # Exactly these methods, as the FastAPI route has them (Starlette adds HEAD to GET).
        self.methods = {m.upper() for m in methods}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope


class ServiceApp(FastAPI):
    """A service's FastAPI app that answers its :class:`DirectRoute` requests without
    Starlette's and FastAPI's own layers (error middlewares, exit stacks, the router's
    scan, the endpoint wrappers): ~19 -> ~13 us per request called in-process, a small
    part of a read's ~0.5 ms of CPU (py-spy had blamed them for more; a direct measurement
    did not). A request a direct route matches fully runs through the
    service's own middlewares (``api.observe``: metrics and the request log; ``api.body``:
    the size limit) to the route's endpoint; an exception it raises gets the app's handler
    for its class, as in Starlette (``Problem`` and the rest: ``api.errors``). Every other
    request, and a direct route's path with another method (405), takes the full stack."""

    direct_routes: Sequence[DirectRoute] = ()
    _direct_stack: ASGIApp | None = None

    def route_directly(self, routes: Sequence[DirectRoute], middlewares: Sequence[tuple[type, dict[str, Any]]]) -> None:
        """Serve ``routes`` through ``middlewares`` (outermost first) only."""
        self.direct_routes = tuple(routes)
        stack: ASGIApp = self._direct_endpoint
        for cls, options in reversed(middlewares):
            stack = cls(stack, **options)
        self._direct_stack = stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._direct_stack is not None:
            for route in self.direct_routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope["app"] = self
                    scope.update(child)
                    await self._direct_stack(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    async def _direct_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = StarletteRequest(scope, receive, send)
        try:
            response = await scope["endpoint"](request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[..., Any] | None:
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                return handler
        return None


class ServiceResources(Protocol):
    """The connections a service holds for its lifetime (``post.resources.Resources``,
    ``query.deps.QueryResources``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_app(
    *,
    title: str,
    settings: Settings,
    resources: Callable[[FastAPI], ServiceResources],
    router: APIRouter,
    metrics: HttpMetrics,
    error_handlers: Iterable[Callable[[FastAPI], None]] = (),
    direct: Sequence[DirectRoute] = (),
    **state: Any,
) -> FastAPI:
    """A service's ASGI app (:class:`ServiceApp`): its routes plus ``GET /metrics`` and ``GET /openapi.json``
    (``api.openapi``), ``direct`` routes matched first (:class:`DirectRoute`), problem-details errors (and
    ``error_handlers``, each installing more), the body size limit, the HTTP metrics and request logs (``api.observe``).
    ``settings``, ``metrics`` and ``state`` are kept on ``app.state``. The lifespan creates
    the resources with ``resources(app)``, starts them, keeps them on
    ``app.state.resources`` and stops them at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        res = resources(app)
        await res.start()
        app.state.resources = res
        # Start-up's heap out of the collector's reach, the young generation collected less
        # often (gc_tuning): full collections had stalled every request in flight for 100+ ms
        # under load (POST at concurrency 32: p99 150-166 ms with them, 51-59 ms after the
        # freeze), and every open stream for ~1 s with 10,000 of them.
        tune_gc()
        pauses = GcPauses(metrics.gc_pauses)
        gc.callbacks.append(pauses)
        try:
            yield
        finally:
            gc.callbacks.remove(pauses)
            await res.stop()

    app = ServiceApp(
        title=title,
        version="1",
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks look up the global providers on every request; the
        # services export Prometheus metrics and JSON logs instead (``api.observe``).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.openapi = lambda: describe_app(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.metrics = metrics
    for name, value in state.items():
        setattr(app.state, name, value)
    app.router.redirect_slashes = False
    errors.install(app)
    for install in error_handlers:
        install(app)
    app.include_router(router)
    app.router.routes[0:0] = list(direct)  # matched before every other route
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], responses={
        200: {"description": "Prometheus text exposition", "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
    })
    middlewares = [(ObserveMiddleware, {"metrics": metrics}),
                   (BodyLimitMiddleware, {"max_body_bytes": settings.max_body_bytes})]
    for cls, options in reversed(middlewares):  # add_middleware wraps: the last added is outermost
        app.add_middleware(cls, **options)
    app.route_directly(direct, middlewares)
    return app


def fast_server_options() -> dict[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools (both locked in
    ``requirements.lock``), or uvicorn's defaults where they are not installed."""
    options = {}
    try:
        import uvloop  # noqa: F401
        options["loop"] = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401
        options["http"] = "httptools"
    except ImportError:
        pass
    return options


def serve(
    create_app: Callable[[Settings], FastAPI],
    *,
    prog: str,
    service: str,
    description: str,
    default_port: int,
    argv: list[str] | None = None,
) -> None:
    """Parse ``--host``, ``--port``, ``--workers`` and ``--log-level`` and run the app under
    uvicorn (uvloop, httptools), logging JSON lines (``logs``) as ``service``. With
    ``--workers N`` (> 1) uvicorn's supervisor runs N processes on one listening socket, each
    building its app with ``create_app`` (settings from the environment); stopping the
    supervisor stops them."""
    import uvicorn

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    options: dict[str, Any] = dict(host=args.host, port=args.port, log_level=args.log_level, proxy_headers=False,
                                   server_header=False, access_log=False,
                                   log_config=dict_config(service, args.log_level, stream="ext://sys.stderr"),
                                   **fast_server_options())
    logging.config.dictConfig(options["log_config"])  # (uvicorn applies it again) so that this line is JSON too
    # Before uvicorn forks any worker process: they inherit it.
    raise_priority(get_settings().http_session_nice, setting="TL_HTTP_SESSION_NICE")
    if args.workers > 1:
        module = create_app.__module__
        if module == "__main__":  # python -m query.service: the workers import it by its name
            module = sys.modules["__main__"].__spec__.name
        uvicorn.run(f"{module}:{create_app.__name__}", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(create_app(get_settings()), **options)
