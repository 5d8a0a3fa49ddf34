"""The Post service of a secondary region: every write forwarded to the primary region.

Writes go to the primary region (the design's section 7): its Kafka holds the log both
regions fan out from, its PostgreSQL the accounts. A secondary region's Post service
(``TL_REGION_ROLE=secondary``) therefore holds no connection to a store: it passes each
request (method, path, query, body, headers but the hop-by-hop ones) to
``TL_PRIMARY_POST_URL`` and answers with the primary's response, status, headers and body
unchanged, so a client sees one API wherever it is routed. ``X-Forwarded-For`` gets the
client's address appended (the primary lists this region's address in
``TL_TRUSTED_PROXIES`` so its per-address limits see the client, not the forwarder);
``X-Request-Id`` is passed on, so both services' logs name the same request. Connections
to the primary leave from the address the request came in on, so the primary sees this
region's address whatever source address the kernel would pick.

When the primary does not answer, nothing was written and the answer is a 503 problem that
says so; when it stopped answering after the request was sent, the outcome is unknown and
the 503 says that (``outcome-unknown``, as the primary's own answer when Kafka does not
acknowledge in time): a retry with the same ``Idempotency-Key`` is safe either way.

Own routes: ``GET /healthz`` (200 when the primary's ``/healthz`` answers 200, else 503
naming it) and ``GET /metrics`` (``post_http_*`` of this process and
``post_forwarded_total{outcome}``).
"""
from __future__ import annotations

import ipaddress
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import Counter
from starlette.responses import Response

from api.common import HttpMetrics, build_app, health_response
from api.errors import describe, problem_response
from settings import Settings

FORWARD_TIMEOUT_S = 10.0
# Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the forwarder sets itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
# httpx hands over the decoded body, so the response's encoding headers no longer apply.
RESPONSE_DROPPED = HOP_BY_HOP | {"content-encoding"}


class ForwardMetrics(HttpMetrics):
    def __init__(self) -> None:
        super().__init__("post", buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        # outcome: answered (the primary's response, whatever its status), unreachable
        # (nothing sent), unknown (sent, no answer)
        self.forwarded = Counter("post_forwarded_total", "Requests forwarded to the primary region, by outcome",
                                 ["outcome"], registry=self.registry)


class Forwarder:
    """The connection pool to the primary region's Post service."""

    def __init__(self, settings: Settings, metrics: ForwardMetrics) -> None:
        self.primary = settings.primary_post_url.rstrip("/")
        self.metrics = metrics
        self.client = self._client(None)
        # Per local address the service was reached on: connections to the primary leave from
        # it, so the primary sees this region's address (the one its TL_TRUSTED_PROXIES names),
        # not whatever source address the kernel picks.
        self._bound: dict[str, httpx.AsyncClient] = {}

    def _client(self, local_address: str | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.primary, timeout=FORWARD_TIMEOUT_S,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            transport=httpx.AsyncHTTPTransport(local_address=local_address) if local_address else None,
        )

    def client_for(self, request: Request) -> httpx.AsyncClient:
        server = request.scope.get("server")
        local = server[0] if server else None
        try:
            if not local or ipaddress.ip_address(local).is_unspecified:
                return self.client
        except ValueError:  # a name, a Unix socket: the kernel chooses
            return self.client
        if local not in self._bound:
            self._bound[local] = self._client(local)
        return self._bound[local]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        for client in [self.client, *self._bound.values()]:
            await client.aclose()

    async def forward(self, request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        if request.client is not None:
            prior = request.headers.get("x-forwarded-for")
            headers = [(k, v) for k, v in headers if k.lower() != "x-forwarded-for"]
            headers.append(("x-forwarded-for", f"{prior}, {request.client.host}" if prior else request.client.host))
        client = self.client_for(request)
        outgoing = client.build_request(
            request.method, request.url.path, params=request.url.query or None,
            headers=headers, content=await request.body(),
        )
        try:
            answer = await client.send(outgoing)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self.metrics.forwarded.labels("unreachable").inc()
            return problem_response(
                503, f"this region takes no writes of its own and the primary region's Post service "
                     f"({self.primary}) is unreachable ({describe(exc)}): nothing was written; retry later",
                slug="primary-unreachable", headers={"Retry-After": "5"})
        except httpx.HTTPError as exc:
            self.metrics.forwarded.labels("unknown").inc()
            return problem_response(
                503, f"the request was forwarded to the primary region's Post service ({self.primary}) but "
                     f"it did not answer ({describe(exc)}): the outcome is unknown; retry the request (a "
                     f"tweet with the same Idempotency-Key)",
                slug="outcome-unknown", outcome="unknown", headers={"Retry-After": "1"})
        self.metrics.forwarded.labels("answered").inc()
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in RESPONSE_DROPPED}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    async def health(self) -> dict[str, dict[str, Any]]:
        try:
            answer = await self.client.get("/healthz", timeout=3.0)
            check: dict[str, Any] = {"ok": answer.status_code == 200, "status": answer.status_code}
        except httpx.HTTPError as exc:
            check = {"ok": False, "error": describe(exc)}
        return {"primary": {**check, "url": self.primary}}


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def healthz(request: Request) -> Response:
    return health_response(await request.app.state.resources.health())


async def forward(request: Request) -> Response:
    return await request.app.state.resources.forward(request)


def create_forwarding_app(settings: Settings) -> FastAPI:
    """The secondary region's Post service (``post.service.create_app`` builds this one when
    ``TL_REGION_ROLE=secondary``)."""
    metrics = ForwardMetrics()
    app = build_app(
        title="Home timeline - Post service (secondary region: forwards to the primary)",
        settings=settings,
        resources=lambda app: Forwarder(app.state.settings, metrics),
        router=APIRouter(),
        metrics=metrics,
    )
    # After /metrics: this process's own /healthz, then everything else (the API
    # description, /openapi.json, too: the primary's) forwarded.
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/openapi.json"]
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/{path:path}", forward, methods=METHODS, include_in_schema=False)
    return app
