"""What every HTTP request leaves behind: its metrics (``<service>_http_requests_total``,
``<service>_http_request_seconds``: ``api.common.HttpMetrics``) and one ``request`` log line
(``logs``): request id, method, route template, status, latency, and the user once known.

The request id is the client's ``X-Request-Id`` when it is 1 to 128 visible ASCII
characters, else a new one; either way the response carries it back in ``X-Request-Id``.
Handlers that learn who the caller is say so with :func:`note_user`.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from api.common import HttpMetrics

log = logging.getLogger("api.request")

REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID_RE = re.compile(rb"[!-~]{1,128}")
# Scrapes and probes are logged at DEBUG, so the INFO log is the traffic.
QUIET_ROUTES = frozenset({"/metrics", "/healthz"})


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-Id if it is usable, else a new one (32 hex digits)."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER and _REQUEST_ID_RE.fullmatch(value):
            return value.decode("ascii")
    return uuid.uuid4().hex


def note_user(request: Request, user_id: int) -> None:
    """The request acts for ``user_id`` (it goes into the request's log line)."""
    request.state.user_id = user_id


class ObserveMiddleware:
    """Counts every HTTP request and its latency by method, route template and status, and
    logs it (one ``request`` event)."""

    def __init__(self, app: ASGIApp, metrics: "HttpMetrics") -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered: float | None = None  # the end of the response: work after it is not the client's wait
        status = 500
        request_id = request_id_of(scope.get("headers", []))
        state = scope.setdefault("state", {})

        async def send_wrapper(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = time.perf_counter()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = (answered or time.perf_counter()) - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(seconds)
            fields: dict[str, Any] = {
                "event": "request", "request_id": request_id, "method": method, "route": template,
                "status": status, "latency_ms": round(seconds * 1000, 2),
            }
            user_id = state.get("user_id") if isinstance(state, dict) else None
            if user_id is not None:
                fields["user_id"] = str(user_id)
            level = logging.DEBUG if template in QUIET_ROUTES else logging.INFO
            log.log(level, "%s %s %d", method, template, status, extra=fields)
