"""The OpenAPI description both HTTP services serve at ``GET /openapi.json`` (and that
``python -m api.openapi`` writes to ``docs/openapi-post.json`` and ``docs/openapi-query.json``).

The routes read their bodies, ids and query strings themselves (``api.body``,
``query.params``: every way a request can be wrong gets its own status and ``detail``),
so FastAPI cannot infer what they accept or answer. Each route declares it with the
helpers here: :func:`operation` (the success body's model, the problem statuses it can
answer, its request body, query and header parameters) and :func:`id_path` (an id in
the path). Every error is the problem document of ``api.errors`` (``Problem`` below), as
``application/problem+json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable

import orjson
from fastapi import FastAPI, Path as PathParam
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from api.errors import PROBLEM_JSON, TYPE_PREFIX

ID_PATTERN = r"^[1-9][0-9]{0,18}$"
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# What each problem status means, in the description of every response that can carry it.
_MEANING = {
    400: "Malformed request: a body that is empty, not UTF-8 or not JSON, a malformed Content-Length, "
         "a bad Idempotency-Key header, an invalid cursor",
    401: "Missing, malformed or unknown bearer token (with WWW-Authenticate)",
    403: "Authenticated, but not allowed to act for this user or on this tweet",
    404: "No such user or tweet",
    409: "Conflict: handle taken, following limit reached, or an Idempotency-Key still in progress",
    413: "Request body over the size limit (TL_MAX_BODY_BYTES)",
    415: "Content-Type is not application/json (UTF-8)",
    422: "Well-formed but invalid: a malformed id, limit or field, unknown or missing fields, a text rule",
    429: "Rate limit exceeded (with Retry-After)",
    503: "A server this request needs is unavailable, or the outcome is unknown (with Retry-After)",
}


class ProblemDocument(BaseModel):
    """RFC 9457 problem details (``api.errors``). Extension members vary by problem."""

    model_config = ConfigDict(extra="allow", title="Problem")
    type: str = Field(description=f"A tag URI naming the kind of problem, {TYPE_PREFIX}<slug>")
    title: str = Field(description="The HTTP reason phrase")
    status: int
    detail: str = Field(description="A sentence a person can act on")


class HealthCheck(BaseModel):
    model_config = ConfigDict(extra="allow")
    ok: bool
    latency_ms: float | None = None
    error: str | None = None
    required: bool | None = None


class Health(BaseModel):
    status: str
    checks: dict[str, HealthCheck]


def problem_responses(statuses: Iterable[int]) -> dict[int | str, dict[str, Any]]:
    ref = {"$ref": "#/components/schemas/Problem"}
    return {s: {"description": _MEANING[s], "content": {PROBLEM_JSON: {"schema": ref}}} for s in sorted(statuses)}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}


def query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def header_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def operation(
    *,
    problems: Iterable[int],
    ok: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    params: Iterable[dict[str, Any]] = (),
    bearer: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for a route decorator: ``response_model`` (``ok``), the problem
    ``responses`` and ``openapi_extra`` (request body, parameters, bearer security:
    ``"required"``, ``"optional"`` or None)."""
    extra: dict[str, Any] = {}
    if body is not None:
        extra["requestBody"] = _json_body(body)
    if params:
        extra["parameters"] = list(params)
    if bearer == "required":
        extra["security"] = [{"bearer": []}]
    elif bearer == "optional":
        extra["security"] = [{"bearer": []}, {}]
    return {"response_model": ok, "responses": problem_responses(problems), "openapi_extra": extra}


def id_path(description: str) -> Any:
    """An id path parameter: documented with its pattern, checked by ``api.body.parse_id``
    (422 ``invalid-id`` rather than FastAPI's own validation error)."""
    return PathParam(description=description, json_schema_extra={"pattern": ID_PATTERN})


def describe_app(app: FastAPI) -> dict[str, Any]:
    """``app``'s OpenAPI document: the routes plus the problem schema and the bearer scheme."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = spec.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["Problem"] = ProblemDocument.model_json_schema()
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "The token POST /v1/users answered (Post service)"},
        }
        app.openapi_schema = spec
    return app.openapi_schema


def render(spec: dict[str, Any]) -> bytes:
    return orjson.dumps(spec, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def documents() -> dict[Path, bytes]:
    """The checked-in description of each service: path -> bytes."""
    from post.service import create_app as post_app
    from query.service import create_app as query_app

    return {DOCS / "openapi-post.json": render(post_app().openapi()),
            DOCS / "openapi-query.json": render(query_app().openapi())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.openapi", description="Write (or --check) docs/openapi-*.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if a checked-in file differs")
    args = parser.parse_args(argv)
    stale = []
    for path, data in documents().items():
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(path)
        else:
            path.write_bytes(data)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"{path.relative_to(ROOT)} is stale: run python -m api.openapi", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
