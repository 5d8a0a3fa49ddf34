"""The request latency the services record (``api.observe.ObserveMiddleware``) ends when the
response's body was sent: work a response leaves for after it (a cache fill: Starlette's
background task) is not the client's wait."""
from __future__ import annotations

import asyncio
import time

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.routing import Route

from api.common import HttpMetrics
from api.observe import ObserveMiddleware

AFTER_S = 0.3


async def _answer_then_work(request) -> Response:
    return Response(b"{}", media_type="application/json", background=BackgroundTask(asyncio.sleep, AFTER_S))


async def test_latency_ends_at_the_answer_not_after_background_work():
    metrics = HttpMetrics("t", buckets=(0.05, 0.1, 0.25, 0.5, 1.0))
    app = ObserveMiddleware(Starlette(routes=[Route("/x", _answer_then_work)]), metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        began = time.perf_counter()
        resp = await client.get("/x")
        took = time.perf_counter() - began
    assert resp.status_code == 200
    assert took >= AFTER_S, "the ASGI call includes the background work (the transport waits for it)"
    labels = {"method": "GET", "route": "/x"}
    assert metrics.registry.get_sample_value("t_http_request_seconds_count", labels) == 1.0
    recorded = metrics.registry.get_sample_value("t_http_request_seconds_sum", labels)
    assert recorded < AFTER_S / 2, f"recorded {recorded:.3f} s: the background work was counted"
    assert metrics.registry.get_sample_value("t_http_requests_total", {**labels, "status": "200"}) == 1.0
