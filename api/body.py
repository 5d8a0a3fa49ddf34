"""Strict request-body and id parsing for the HTTP services.

Bodies are read here rather than by FastAPI so that every way a body can be wrong
gets its own status and a precise ``detail``:

* wrong or missing ``Content-Type`` (only ``application/json``, optionally with
  ``charset=utf-8``) -> 415
* larger than ``max_body_bytes`` -> 413, checked from ``Content-Length`` before the
  body is read (:class:`BodyLimitMiddleware`) and again while reading it, so a
  chunked or lying client cannot get past the limit
* malformed ``Content-Length`` -> 400
* empty, not UTF-8, or not JSON -> 400
* JSON that is not an object, unknown fields, missing fields, wrong types -> 422
"""
from __future__ import annotations

import re
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import Problem, describe_errors, json_type_name, problem_response
from schemas.events import INT64_MAX

_ID_RE = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)

M = TypeVar("M", bound=BaseModel)


def parse_id(raw: Any, name: str) -> int:
    """A positive int64 written as canonical decimal ASCII (no sign, spaces or leading 0)."""
    if not isinstance(raw, str) or not _ID_RE.fullmatch(raw) or int(raw) > INT64_MAX:
        shown = raw if isinstance(raw, str) and len(raw) <= 40 else f"{str(raw)[:40]}..."
        raise Problem(
            422,
            f"{name} must be a decimal integer between 1 and {INT64_MAX} "
            f"written as a string, got {shown!r}",
            slug="invalid-id",
        )
    return int(raw)


class BodyLimitMiddleware:
    """Reject a request whose declared ``Content-Length`` is malformed or over the cap.

    The same cap is enforced again while the body is read (:func:`read_json`), for
    requests with no or a false ``Content-Length``.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            values = [v for k, v in scope.get("headers", ()) if k == b"content-length"]
            if values:
                response = None
                raw = values[0].strip()
                if len(set(values)) > 1 or not raw.isdigit() or len(raw) > 30:
                    response = problem_response(
                        400, "Content-Length header must be a single non-negative integer",
                        slug="bad-content-length",
                    )
                elif int(raw) > self.max_body_bytes:
                    response = problem_response(
                        413,
                        f"request body of {int(raw)} bytes exceeds the limit of "
                        f"{self.max_body_bytes} bytes",
                    )
                if response is not None:
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _check_content_type(request: Request) -> None:
    raw = request.headers.get("content-type")
    if raw is None:
        raise Problem(415, "Content-Type header is missing; send application/json")
    media, _, params = raw.partition(";")
    if media.strip().lower() != "application/json":
        raise Problem(
            415, f"Content-Type {media.strip()[:100]!r} is not supported; send application/json"
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in {
            "utf-8",
            "utf8",
        }:
            raise Problem(
                415,
                f"charset {value.strip()[:40]!r} is not supported; JSON bodies must be UTF-8",
            )


async def read_body(request: Request, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise Problem(
                    413, f"request body exceeds the limit of {max_bytes} bytes"
                )
            chunks.append(chunk)
    except ClientDisconnect:
        raise Problem(400, "client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _model_fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


async def read_json(request: Request, model: type[M], max_bytes: int) -> M:
    """Read, decode and validate a JSON object body into ``model`` (strict, no extras)."""
    _check_content_type(request)
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        raise Problem(
            400,
            f"request body is empty; expected a JSON object with {', '.join(_model_fields(model))}",
            slug="malformed-body",
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(
            400,
            f"request body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            slug="malformed-body",
        ) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(
            400, f"request body is not valid JSON: {exc.msg} at offset {exc.pos}",
            slug="malformed-body",
        ) from None
    if not isinstance(data, dict):
        raise Problem(
            422, f"request body must be a JSON object, got {json_type_name(data)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=True)
        raise Problem(
            422,
            describe_errors(errors, allowed=_model_fields(model)),
            errors=[
                {"loc": [str(p) for p in e["loc"]], "type": e["type"], "msg": e["msg"]}
                for e in errors
            ],
        ) from None
