"""Bad requests to the Post service: each gets its exact 4xx, problem+json and a precise detail.

Runs against the real servers (so authenticated cases reach PostgreSQL and Redis) and
finally checks the service's own metrics: none of these requests produced a 5xx, and
none of them put an event on the log.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable

import pytest
import pytest_asyncio

from tests.integration.post_fixtures import (  # noqa: F401  (fixtures)
    assert_problem,
    post_client,
    post_settings,
    read_topic,
    signup,
)

pytestmark = pytest.mark.integration

MAX = 16 * 1024  # settings.max_body_bytes default
JSON = {"content-type": "application/json"}
ID_RULE = "must be a decimal integer between 1 and 9223372036854775807 written as a string, got "


@pytest_asyncio.fixture(scope="module")
async def users(post_client) -> dict[str, Any]:
    alice, bob = await signup(post_client), await signup(post_client)
    resp = await post_client.post("/v1/tweets", json={"text": "bob's"}, headers=bob["auth"])
    assert resp.status_code == 201
    return {"alice": alice, "bob": bob, "bob_tweet": resp.json()["tweet_id"]}


@pytest_asyncio.fixture(scope="module")
async def topics_before(post_settings, users) -> AsyncIterator[dict[str, int]]:
    counts = {t: len(await read_topic(post_settings, t)) for t in
              (post_settings.topic_tweets, post_settings.topic_follows, post_settings.topic_activity)}
    yield counts


def A(users: dict[str, Any], who: str = "alice", **extra: str) -> dict[str, str]:
    return {**users[who]["auth"], **extra}


async def _chunks() -> AsyncIterator[bytes]:
    yield b'{"text": "'
    for _ in range(MAX // 1000 + 2):
        yield b"x" * 1000
    yield b'"}'


def _nested(depth: int) -> bytes:
    return b'{"text": ' + b"[" * depth + b"]" * depth + b"}"


# (name, request builder -> (method, url, kwargs), status, exact detail or a prefix ending in '…')
Case = tuple[str, Callable[[dict[str, Any]], tuple[str, str, dict[str, Any]]], int, str]

CASES: list[Case] = [
    # --- content type -------------------------------------------------------------
    ("no content type", lambda u: ("POST", "/v1/users", {"content": b'{"handle":"x"}'}),
     415, "Content-Type header is missing; send application/json"),
    ("text/plain", lambda u: ("POST", "/v1/users", {"content": b'{"handle":"x"}', "headers": {"content-type": "text/plain"}}),
     415, "Content-Type 'text/plain' is not supported; send application/json"),
    ("form body", lambda u: ("POST", "/v1/tweets", {"data": {"text": "hi"}, "headers": A(u)}),
     415, "Content-Type 'application/x-www-form-urlencoded' is not supported; send application/json"),
    ("latin-1 charset", lambda u: ("POST", "/v1/users", {"content": b'{"handle":"x"}',
                                                          "headers": {"content-type": "application/json; charset=latin-1"}}),
     415, "charset 'latin-1' is not supported; JSON bodies must be UTF-8"),
    # --- size ----------------------------------------------------------------------
    ("declared body too large", lambda u: ("POST", "/v1/tweets", {"content": b'{"text": "' + b"x" * MAX + b'"}',
                                                                 "headers": A(u, **JSON)}),
     413, f"request body of {MAX + 12} bytes exceeds the limit of {MAX} bytes"),
    ("chunked body too large", lambda u: ("POST", "/v1/tweets", {"content": _chunks(), "headers": A(u, **JSON)}),
     413, f"request body exceeds the limit of {MAX} bytes"),
    ("bad content-length", lambda u: ("POST", "/v1/users", {"content": b"{}", "headers": {**JSON, "content-length": "2x"}}),
     400, "Content-Length header must be a single non-negative integer"),
    # --- body syntax -----------------------------------------------------------------
    ("empty body", lambda u: ("POST", "/v1/users", {"content": b"", "headers": JSON}),
     400, "request body is empty; expected a JSON object with handle"),
    ("invalid utf-8", lambda u: ("POST", "/v1/tweets", {"content": b'{"text": "ab\xff"}', "headers": A(u, **JSON)}),
     400, "request body is not valid UTF-8 (byte 0xff at offset 12)"),
    ("truncated json", lambda u: ("POST", "/v1/users", {"content": b'{"handle": "x"', "headers": JSON}),
     400, "request body is not valid JSON: unexpected end of data at offset 14"),
    ("trailing comma", lambda u: ("POST", "/v1/users", {"content": b'{"handle": "x",}', "headers": JSON}),
     400, "request body is not valid JSON: trailing comma is not allowed at offset 14"),
    ("lone surrogate escape", lambda u: ("POST", "/v1/tweets", {"content": b'{"text": "\\ud800"}', "headers": A(u, **JSON)}),
     400, "request body is not valid JSON: no low surrogate in string at offset 10"),
    ("nesting too deep", lambda u: ("POST", "/v1/tweets", {"content": _nested(2000), "headers": A(u, **JSON)}),
     400, "request body is not valid JSON: depth limit exceeded…"),
    # --- body shape ------------------------------------------------------------------
    ("array body", lambda u: ("POST", "/v1/users", {"json": [{"handle": "x"}]}),
     422, "request body must be a JSON object, got array"),
    ("string body", lambda u: ("POST", "/v1/tweets", {"json": "hello", "headers": A(u)}),
     422, "request body must be a JSON object, got string"),
    ("null body", lambda u: ("POST", "/v1/users", {"content": b"null", "headers": JSON}),
     422, "request body must be a JSON object, got null"),
    ("unknown field", lambda u: ("POST", "/v1/users", {"json": {"handle": "okay", "admin": True}}),
     422, "unknown field 'admin' (allowed: handle)"),
    ("author_id smuggled", lambda u: ("POST", "/v1/tweets", {"json": {"text": "hi", "author_id": "1"}, "headers": A(u)}),
     422, "unknown field 'author_id' (allowed: text)"),
    ("missing field", lambda u: ("POST", "/v1/users", {"json": {}}),
     422, "field 'handle' is required"),
    ("handle is a number", lambda u: ("POST", "/v1/users", {"json": {"handle": 42}}),
     422, "field 'handle' must be a string, got number"),
    ("text is null", lambda u: ("POST", "/v1/tweets", {"json": {"text": None}, "headers": A(u)}),
     422, "field 'text' must be a string, got null"),
    ("text is an array", lambda u: ("POST", "/v1/tweets", {"json": {"text": ["hi"]}, "headers": A(u)}),
     422, "field 'text' must be a string, got array"),
    ("text is a boolean", lambda u: ("POST", "/v1/tweets", {"json": {"text": True}, "headers": A(u)}),
     422, "field 'text' must be a string, got boolean"),
    # --- handle and text rules -----------------------------------------------------------
    ("empty handle", lambda u: ("POST", "/v1/users", {"json": {"handle": ""}}),
     422, "handle breaks rule 'empty': handle is empty"),
    ("handle too long", lambda u: ("POST", "/v1/users", {"json": {"handle": "h" * 31}}),
     422, "handle breaks rule 'too_long': handle is 31 characters, the limit is 30"),
    ("handle with space", lambda u: ("POST", "/v1/users", {"json": {"handle": "a b"}}),
     422, "handle breaks rule 'invalid_character': handle character U+0020 SPACE at position 1 is not "
          "allowed (only A-Z, a-z, 0-9 and _)"),
    ("empty text", lambda u: ("POST", "/v1/tweets", {"json": {"text": ""}, "headers": A(u)}),
     422, "text breaks rule 'empty': tweet text is empty"),
    ("whitespace-only text", lambda u: ("POST", "/v1/tweets", {"json": {"text": " \n\u3000 "}, "headers": A(u)}),
     422, "text breaks rule 'whitespace_only': tweet text is only whitespace (4 characters)"),
    ("NUL in text", lambda u: ("POST", "/v1/tweets", {"json": {"text": "hi\x00"}, "headers": A(u)}),
     422, "text breaks rule 'control_character': control character U+0000 at position 2 is not allowed (only \\n is)"),
    ("tab in text", lambda u: ("POST", "/v1/tweets", {"json": {"text": "a\tb"}, "headers": A(u)}),
     422, "text breaks rule 'control_character': control character U+0009 at position 1 is not allowed (only \\n is)"),
    ("281 code points", lambda u: ("POST", "/v1/tweets", {"json": {"text": "é" * 281}, "headers": A(u)}),
     422, "text breaks rule 'too_long': tweet text is 281 characters after NFC normalisation, the limit is 280"),
    # --- authentication ------------------------------------------------------------------
    ("no token", lambda u: ("POST", "/v1/tweets", {"json": {"text": "hi"}}),
     401, "missing Authorization header; send 'Authorization: Bearer <token>' with the token returned by POST /v1/users"),
    ("basic auth", lambda u: ("POST", "/v1/tweets", {"json": {"text": "hi"}, "headers": {"authorization": "Basic YTpi"}}),
     401, "Authorization scheme 'Basic' is not supported; use 'Bearer <token>'"),
    ("bearer without token", lambda u: ("POST", "/v1/tweets", {"json": {"text": "hi"}, "headers": {"authorization": "Bearer "}}),
     401, "Authorization header has no token after 'Bearer'"),
    ("malformed token", lambda u: ("DELETE", f"/v1/tweets/{u['bob_tweet']}", {"headers": {"authorization": "Bearer not a token!"}}),
     401, "bearer token is malformed"),
    ("unknown token", lambda u: ("POST", "/v1/tweets", {"json": {"text": "hi"}, "headers": {"authorization": "Bearer " + "A" * 43}}),
     401, "bearer token is not valid"),
    ("no token to follow", lambda u: ("POST", f"/v1/users/{u['alice']['user_id']}/following",
                                      {"json": {"target_user_id": u["bob"]["user_id"]}}),
     401, "missing Authorization header; send 'Authorization: Bearer <token>' with the token returned by POST /v1/users"),
    # --- headers -----------------------------------------------------------------------
    ("idempotency key too long", lambda u: ("POST", "/v1/tweets", {"json": {"text": "hi"}, "headers": A(u, **{"Idempotency-Key": "k" * 201})}),
     400, "Idempotency-Key must be 1 to 200 printable ASCII characters (got 201 characters)"),
    ("empty idempotency key", lambda u: ("POST", "/v1/tweets", {"json": {"text": "hi"}, "headers": A(u, **{"Idempotency-Key": ""})}),
     400, "Idempotency-Key must be 1 to 200 printable ASCII characters (got 0 characters)"),
    # --- ids -------------------------------------------------------------------------
    ("tweet id not a number", lambda u: ("DELETE", "/v1/tweets/abc", {"headers": A(u)}),
     422, "tweet_id " + ID_RULE + "'abc'"),
    ("tweet id zero", lambda u: ("DELETE", "/v1/tweets/0", {"headers": A(u)}),
     422, "tweet_id " + ID_RULE + "'0'"),
    ("tweet id negative", lambda u: ("DELETE", "/v1/tweets/-5", {"headers": A(u)}),
     422, "tweet_id " + ID_RULE + "'-5'"),
    ("tweet id beyond int64", lambda u: ("DELETE", "/v1/tweets/9223372036854775808", {"headers": A(u)}),
     422, "tweet_id " + ID_RULE + "'9223372036854775808'"),
    ("tweet id with leading zero", lambda u: ("DELETE", "/v1/tweets/0042", {"headers": A(u)}),
     422, "tweet_id " + ID_RULE + "'0042'"),
    ("unknown tweet", lambda u: ("DELETE", "/v1/tweets/42", {"headers": A(u)}),
     404, "no tweet with id 42"),
    ("someone else's tweet", lambda u: ("DELETE", f"/v1/tweets/{u['bob_tweet']}", {"headers": A(u)}),
     403, "tweet {bob_tweet} belongs to another user; only its author can delete it"),
    ("follow as someone else", lambda u: ("POST", f"/v1/users/{u['bob']['user_id']}/following",
                                          {"json": {"target_user_id": u["alice"]["user_id"]}, "headers": A(u)}),
     403, "you are authenticated as user {alice} and can only change your own follows, not those of user {bob}"),
    ("unfollow as someone else", lambda u: ("DELETE", f"/v1/users/{u['bob']['user_id']}/following/{u['alice']['user_id']}",
                                            {"headers": A(u)}),
     403, "you are authenticated as user {alice} and can only change your own follows, not those of user {bob}"),
    ("follower id malformed", lambda u: ("POST", "/v1/users/me/following", {"json": {"target_user_id": "1"}, "headers": A(u)}),
     422, "user_id " + ID_RULE + "'me'"),
    ("target id is a number", lambda u: ("POST", f"/v1/users/{u['alice']['user_id']}/following",
                                         {"json": {"target_user_id": int(u["bob"]["user_id"])}, "headers": A(u)}),
     422, "field 'target_user_id' must be a string, got number"),
    ("target id malformed", lambda u: ("POST", f"/v1/users/{u['alice']['user_id']}/following",
                                       {"json": {"target_user_id": "12abc"}, "headers": A(u)}),
     422, "target_user_id " + ID_RULE + "'12abc'"),
    ("follow yourself", lambda u: ("POST", f"/v1/users/{u['alice']['user_id']}/following",
                                   {"json": {"target_user_id": u["alice"]["user_id"]}, "headers": A(u)}),
     422, "you cannot follow or unfollow yourself"),
    ("follow unknown user", lambda u: ("POST", f"/v1/users/{u['alice']['user_id']}/following",
                                       {"json": {"target_user_id": "7"}, "headers": A(u)}),
     404, "no user with id 7"),
    ("unfollow unknown user", lambda u: ("DELETE", f"/v1/users/{u['alice']['user_id']}/following/7", {"headers": A(u)}),
     404, "no user with id 7"),
    ("unfollow malformed target", lambda u: ("DELETE", f"/v1/users/{u['alice']['user_id']}/following/%20", {"headers": A(u)}),
     422, "target_user_id " + ID_RULE + "' '"),
    # --- routing ---------------------------------------------------------------------
    ("unknown path", lambda u: ("GET", "/v1/timeline", {}),
     404, "no resource at GET /v1/timeline"),
    ("trailing slash", lambda u: ("POST", "/v1/users/", {"json": {"handle": "x"}}),
     404, "no resource at POST /v1/users/"),
    ("GET on a POST route", lambda u: ("GET", "/v1/tweets", {}),
     405, "method GET is not allowed on /v1/tweets; allowed: POST"),
    ("PATCH a tweet", lambda u: ("PATCH", f"/v1/tweets/{u['bob_tweet']}", {"json": {"text": "edit"}}),
     405, "method PATCH is not allowed on /v1/tweets/{bob_tweet}; allowed: DELETE"),
]


def _fill(text: str, users: dict[str, Any]) -> str:
    return text.format(bob_tweet=users["bob_tweet"], alice=users["alice"]["user_id"], bob=users["bob"]["user_id"])


def test_there_are_at_least_30_distinct_cases() -> None:
    assert len({name for name, *_ in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("name,build,status,detail", CASES, ids=[c[0] for c in CASES])
async def test_bad_request(post_client, users, topics_before, name, build, status, detail) -> None:
    method, url, kwargs = build(users)
    resp = await post_client.request(method, url, **kwargs)
    expected = _fill(detail, users)
    if expected.endswith("…"):
        body = assert_problem(resp, status, expected[:-1])
        assert body["detail"].startswith(expected[:-1])
    else:
        assert_problem(resp, status, expected, exact=True)
    if status == 401:
        assert resp.headers["www-authenticate"].startswith('Bearer realm="timeline"')
    if status == 405:
        assert resp.headers["allow"]
    if status == 422 and "breaks rule" in expected:
        assert resp.json()["rule"] == expected.split("'")[1]


async def test_no_bad_request_caused_a_5xx_or_an_event(post_client, post_settings, topics_before) -> None:
    metrics = (await post_client.get("/metrics")).text
    statuses = [line for line in metrics.splitlines()
                if line.startswith("post_http_requests_total{") and not line.endswith(" 0.0")]
    assert statuses and not any('status="5' in line for line in statuses), statuses
    for topic, count in topics_before.items():
        assert len(await read_topic(post_settings, topic)) == count, topic
