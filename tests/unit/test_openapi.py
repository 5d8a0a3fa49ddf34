"""The OpenAPI description: served by both services, checked in under docs/, complete."""
from __future__ import annotations

import httpx
import orjson
import pytest

from api.openapi import documents, render
from post.service import create_app as post_app
from query.service import create_app as query_app


def test_checked_in_descriptions_are_what_the_apps_generate():
    for path, data in documents().items():
        assert path.exists(), f"{path.name} is missing: run python -m api.openapi"
        assert path.read_bytes() == data, f"{path.name} is stale: run python -m api.openapi"


@pytest.mark.parametrize("create_app", [post_app, query_app])
async def test_each_service_serves_its_description(create_app):
    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        resp = await client.get("/openapi.json")
    assert resp.status_code == 200
    assert render(resp.json()) == render(app.openapi())


@pytest.mark.parametrize("create_app", [post_app, query_app])
def test_every_operation_documents_its_problems_and_success_body(create_app):
    spec = create_app().openapi()
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path == "/metrics":
                continue
            codes = set(op["responses"])
            assert "503" in codes, (method, path)
            ok = [c for c in codes if c.startswith("2")]
            assert len(ok) == 1, (method, path, codes)
            if path.endswith("/stream"):  # Server-Sent Events (query/stream.py)
                assert list(op["responses"][ok[0]]["content"]) == ["text/event-stream"], (method, path)
            elif ok[0] != "204":
                assert "$ref" in op["responses"][ok[0]]["content"]["application/json"]["schema"], (method, path)
            for code in codes - set(ok):
                content = op["responses"][code]["content"]
                assert list(content) == ["application/problem+json"], (method, path, code)
            if op.get("security") or "{" in path:
                assert {"401", "422"} & codes, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "415", "422"} <= codes, (method, path)


def test_rendering_is_stable():
    spec = post_app().openapi()
    assert render(orjson.loads(render(spec))) == render(spec)
