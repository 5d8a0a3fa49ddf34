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
