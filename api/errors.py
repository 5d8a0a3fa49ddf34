"""RFC 9457 problem details for every error the HTTP services return.

Every non-2xx response is ``application/problem+json``::

    {"type": "tag:home-timeline,2024:problem/rate-limited", "title": "Too Many Requests",
     "status": 429, "detail": "rate limit of 50 tweets (refilling 0.5/s) exceeded; retry in 2 s"}

``type`` is a non-dereferenceable tag URI naming the kind of problem (RFC 9457 §3.1.1
allows that); ``title`` is the HTTP reason phrase; ``detail`` is a sentence a person can
act on. Extension members (``rule``, ``errors``, ...) are added where useful.

:func:`install` registers handlers for our own :class:`Problem`, Starlette's
``HTTPException`` (unknown routes -> 404, wrong method -> 405), FastAPI's
``RequestValidationError`` and a catch-all, so that nothing answers with a non-JSON body.
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Iterable, Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "tag:home-timeline,2024:problem/"

# Default problem slug per status, used when a raiser gives none.
_DEFAULT_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "rate-limited",
    500: "internal",
    503: "unavailable",
}


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem+json response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or _DEFAULT_SLUGS.get(status, "error")
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {
            "type": TYPE_PREFIX + self.slug,
            "title": _title(self.status),
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }

    def response(self) -> Response:
        return Response(
            content=orjson.dumps(self.body()),
            status_code=self.status,
            media_type=PROBLEM_JSON,
            headers=self.headers,
        )


def problem_response(status: int, detail: str, **kwargs: Any) -> Response:
    return Problem(status, detail, **kwargs).response()


def describe(exc: BaseException) -> str:
    """An exception in one line, for a 503's ``detail``, a health check and the logs: its
    class and the first line of its message, or "timed out" for a timeout without one."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


# --- describing validation errors -----------------------------------------------


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _loc(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        where, parts = parts[0], parts[1:]
        if not parts:
            return where
        if where != "body":
            return f"{where} parameter {'.'.join(parts)!r}"
    return f"field {'.'.join(parts)!r}" if parts else "body"


def describe_errors(errors: Iterable[Mapping[str, Any]], allowed: Iterable[str] = ()) -> str:
    """One human-readable sentence (or several joined by '; ') for pydantic errors."""
    allowed_list = ", ".join(sorted(allowed))
    out: list[str] = []
    for err in errors:
        kind = err.get("type", "")
        where = _loc(err.get("loc", ()))
        value = err.get("input")
        if kind == "missing":
            out.append(f"{where} is required")
        elif kind == "extra_forbidden":
            suffix = f" (allowed: {allowed_list})" if allowed_list else ""
            out.append(f"unknown {where}{suffix}")
        elif kind == "string_type":
            out.append(f"{where} must be a string, got {json_type_name(value)}")
        elif kind in {"int_type", "int_parsing"}:
            out.append(f"{where} must be an integer, got {json_type_name(value)}")
        elif kind in {"model_type", "model_attributes_type", "dict_type"}:
            out.append(f"{where} must be a JSON object, got {json_type_name(value)}")
        else:
            out.append(f"{where}: {err.get('msg', 'is invalid')}")
    return "; ".join(out) or "request is invalid"


def _jsonable_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "type": e.get("type"), "msg": e.get("msg")}
        for e in errors
    ]


# --- handlers ------------------------------------------------------------------------


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response()


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404:
        detail = f"no resource at {request.method} {request.url.path}"
    elif status == 405:
        allow = headers.get("Allow") or headers.get("allow") or ""
        detail = f"method {request.method} is not allowed on {request.url.path}"
        if allow:
            detail += f"; allowed: {allow}"
    else:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail else _title(status)
    return problem_response(status, detail, headers=headers)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    return problem_response(
        422, describe_errors(errors), errors=_jsonable_errors(errors)
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal error; the request was not completed")


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
