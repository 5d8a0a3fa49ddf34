"""Post service HTTP mapping that needs no server: every dependency points at a closed port.

These check what the service answers *before* it touches PostgreSQL, Redis or Kafka
(content types, sizes, JSON shape, auth header syntax, routing) and that a missing
dependency is a 503 problem, never a 500. The full behaviour against real servers is in
tests/integration/test_post_service.py and test_post_bad_input.py.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx
import pytest

from api.body import parse_id
from api.errors import PROBLEM_JSON, describe_errors
from post.service import create_app
from post.tweets import iso_utc
from settings import Settings

CLOSED = Settings(
    kafka_bootstrap="127.0.0.1:1",
    redis_url="redis://127.0.0.1:1/0",
    postgres_dsn="postgresql://nobody:nothing@127.0.0.1:1/none",
    max_body_bytes=1024,
)


@asynccontextmanager
async def client(settings: Settings = CLOSED) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, kafka_timeout_s=1.0)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://post") as c:
            yield c


def assert_problem(resp: httpx.Response, status: int, detail_part: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM_JSON
    body = resp.json()
    assert body["status"] == status
    assert body["type"].startswith("tag:home-timeline,2024:problem/")
    assert body["title"]
    assert detail_part in body["detail"], body["detail"]
    return body


# --- pure helpers ----------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "42", "9223372036854775807", "1000000000000000000"])
def test_parse_id_accepts_canonical_positive_int64(raw: str) -> None:
    assert parse_id(raw, "x") == int(raw)


@pytest.mark.parametrize(
    "raw",
    ["", "0", "-1", "+1", "01", " 1", "1 ", "1.0", "1e3", "9223372036854775808",
     "99999999999999999999", "abc", "١٢٣", "0x10", 12, None, True, 1.5],
)
def test_parse_id_rejects_everything_else(raw: object) -> None:
    from api.errors import Problem

    with pytest.raises(Problem) as info:
        parse_id(raw, "tweet_id")
    assert info.value.status == 422
    assert "tweet_id must be a decimal integer between 1 and 9223372036854775807" in info.value.detail


def test_iso_utc_has_millis_and_z() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1700000000123) == "2023-11-14T22:13:20.123Z"
    for ms in range(1764071178000, 1764071179000):  # no float truncation anywhere in a second
        assert iso_utc(ms).endswith(f".{ms % 1000:03d}Z")


def test_describe_errors_is_readable() -> None:
    errors = [
        {"type": "missing", "loc": ("text",), "msg": "Field required"},
        {"type": "extra_forbidden", "loc": ("foo",), "msg": "Extra inputs", "input": 1},
        {"type": "string_type", "loc": ("text",), "msg": "x", "input": 5},
    ]
    assert describe_errors(errors, allowed=["text"]) == (
        "field 'text' is required; unknown field 'foo' (allowed: text); "
        "field 'text' must be a string, got number"
    )


# --- HTTP without servers --------------------------------------------------------------


async def test_unknown_route_is_problem_404() -> None:
    async with client() as c:
        assert_problem(await c.get("/nope"), 404, "no resource at GET /nope")
        assert_problem(await c.post("/v1/tweets/"), 404, "no resource at POST /v1/tweets/")


async def test_wrong_method_is_problem_405_with_allow() -> None:
    async with client() as c:
        resp = await c.put("/v1/tweets")
        assert_problem(resp, 405, "method PUT is not allowed on /v1/tweets")
        assert "POST" in resp.headers["allow"]


async def test_signup_body_errors_before_any_dependency() -> None:
    async with client() as c:
        assert_problem(await c.post("/v1/users", content=b'{"handle":"a"}'), 415,
                       "Content-Type header is missing")
        assert_problem(await c.post("/v1/users", content=b"x", headers={"content-type": "text/plain"}),
                       415, "Content-Type 'text/plain' is not supported")
        assert_problem(await c.post("/v1/users", json={"handle": "a" * 2000}), 413,
                       "exceeds the limit of 1024 bytes")
        assert_problem(await c.post("/v1/users", content=b"{", headers={"content-type": "application/json"}),
                       400, "request body is not valid JSON")
        assert_problem(await c.post("/v1/users", json=[1]), 422, "request body must be a JSON object, got array")
        assert_problem(await c.post("/v1/users", json={"handle": "ok", "x": 1}), 422,
                       "unknown field 'x' (allowed: handle)")
        assert_problem(await c.post("/v1/users", json={"handle": "bad handle"}), 422,
                       "handle breaks rule 'invalid_character'")


async def test_chunked_body_over_limit_is_413_while_reading() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"handle": "'
        for _ in range(20):
            yield b"a" * 100
        yield b'"}'

    async with client() as c:
        resp = await c.post("/v1/users", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in resp.request.headers
        assert_problem(resp, 413, "request body exceeds the limit of 1024 bytes")


async def test_auth_header_syntax_is_401_without_database() -> None:
    async with client() as c:
        resp = await c.post("/v1/tweets", json={"text": "hi"})
        assert_problem(resp, 401, "missing Authorization header")
        assert resp.headers["www-authenticate"].startswith("Bearer")
        resp = await c.post("/v1/tweets", json={"text": "hi"}, headers={"authorization": "Basic abc"})
        assert_problem(resp, 401, "Authorization scheme 'Basic' is not supported")
        resp = await c.post("/v1/tweets", json={"text": "hi"}, headers={"authorization": "Bearer ???"})
        assert_problem(resp, 401, "bearer token is malformed")
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]


async def test_dependencies_down_is_503_not_500() -> None:
    async with client() as c:
        # PostgreSQL is down, so no Snowflake worker id could be leased.
        assert_problem(await c.post("/v1/users", json={"handle": "nobody"}), 503,
                       "cannot issue ids: no Snowflake worker id is leased from PostgreSQL: PostgreSQL error: ")
        # PostgreSQL is down: the token cannot be checked.
        resp = await c.post("/v1/tweets", json={"text": "hi"},
                            headers={"authorization": "Bearer " + "a" * 43})
        assert_problem(resp, 503, "PostgreSQL is unavailable")
        health = await c.get("/healthz")
        body = assert_problem(health, 503, "degraded: kafka, postgres, redis, snowflake unavailable")
        assert set(body["checks"]) == {"postgres", "redis", "kafka", "snowflake"}
        assert not any(check["ok"] for check in body["checks"].values())


async def test_metrics_endpoint_counts_requests() -> None:
    async with client() as c:
        await c.get("/nope")
        resp = await c.get("/metrics")
        assert resp.status_code == 200
        assert 'post_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in resp.text
