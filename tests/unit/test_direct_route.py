"""The services' direct routes (``api.common.DirectRoute``) answer like the FastAPI routes they
shadow: the same methods (no HEAD added), the same 405 with ``Allow``, listed in the API
description by their FastAPI route."""
from __future__ import annotations

import httpx
import pytest

from post.service import create_app as post_app
from query.service import create_app as query_app


@pytest.mark.parametrize("make, template, path, allowed", [
    (query_app, "/v1/users/{user_id}/timelines/home", "/v1/users/12/timelines/home", "GET"),
    (post_app, "/v1/tweets", "/v1/tweets", "POST"),
])
async def test_other_methods_get_the_405_the_fastapi_route_gave(make, template, path, allowed):
    app = make()
    assert app.router.routes[0].path == template, "the direct route is matched first"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for method in ("HEAD", "PUT", "DELETE", "PATCH"):
            if method == allowed:
                continue
            resp = await client.request(method, path)
            assert resp.status_code == 405 and resp.headers["allow"] == allowed, (method, resp.text)
    described = app.openapi()["paths"][template]
    assert set(described) == {allowed.lower()}


class _NoResources:
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _direct_app():
    from fastapi import APIRouter
    from starlette.responses import Response

    from api.common import DirectRoute, HttpMetrics, build_app
    from api.errors import Problem
    from settings import Settings

    async def endpoint(request):
        kind = request.path_params["kind"]
        if kind == "problem":
            raise Problem(409, "a conflict a person can act on")
        if kind == "boom":
            raise RuntimeError("a bug")
        return Response(b'{"ok":true}', media_type="application/json")

    return build_app(title="t", settings=Settings(), resources=lambda app: _NoResources(), router=APIRouter(),
                     metrics=HttpMetrics("t", [0.01, 1.0]),
                     direct=[DirectRoute("/things/{kind}", endpoint, methods=["GET"])])


async def test_a_direct_request_skips_the_framework_stack_but_keeps_errors_metrics_and_request_ids():
    app = _direct_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        ok = await client.get("/things/fine", headers={"x-request-id": "abc-1"})
        problem = await client.get("/things/problem")
        boom = await client.get("/things/boom")
        big = await client.get("/things/fine", headers={"content-length": str(10**9)})
        assert app.middleware_stack is None, "Starlette's stack was never built: every request went direct"
        other = await client.get("/nowhere")  # not a direct route: the full stack, as before
    assert ok.status_code == 200 and ok.json() == {"ok": True} and ok.headers["x-request-id"] == "abc-1"
    assert problem.status_code == 409 and problem.headers["content-type"] == "application/problem+json"
    assert problem.json()["detail"] == "a conflict a person can act on" and problem.headers["x-request-id"]
    assert boom.status_code == 500 and boom.json()["detail"].startswith("internal error")
    assert big.status_code == 413
    assert other.status_code == 404 and app.middleware_stack is not None
    counted = {(s.labels["route"], s.labels["status"]): s.value
               for m in app.state.metrics.requests.metric.collect() for s in m.samples if s.name.endswith("_total")}
    assert counted[("/things/{kind}", "200")] == 1 and counted[("/things/{kind}", "409")] == 1
    assert counted[("/things/{kind}", "500")] == 1 and counted[("/things/{kind}", "413")] == 1
