"""Property-based fuzz of both HTTP services from their checked-in OpenAPI description
(``docs/openapi-*.json``, which ``tests/unit/test_openapi.py`` keeps equal to what the
apps serve), with schemathesis: valid and invalid requests for every operation, sent to
the real services (``python -m post.service`` / ``query.service`` processes) over the
real servers in a namespace of their own.

Checked on every answer: never a 5xx; the status is one the description lists; the
content type and body match it; every error is a problem document with a ``detail``.

CI runs a bounded form (``TL_FUZZ_EXAMPLES``, default 15 examples per operation and
generation mode, well under a minute); ``TL_FUZZ_EXAMPLES=500`` is the long form.
"""
from __future__ import annotations

import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from api.errors import PROBLEM_JSON
from settings import Settings
from tests.integration.pipeline_harness import drop, isolated_settings, provision
from tests.integration.service_procs import running

pytestmark = [pytest.mark.integration]

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLES = int(os.environ.get("TL_FUZZ_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ = hsettings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 50,
                 suppress_health_check=list(HealthCheck), database=None)

# (service, method, path template, status) -> answers, for the coverage check at the end.
SEEN: Counter[tuple[str, str, str, int]] = Counter()

post_schema = schemathesis.openapi.from_path(DOCS / "openapi-post.json")
query_schema = schemathesis.openapi.from_path(DOCS / "openapi-query.json")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, services: Any) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    # Sign-ups all come from one address here: that limit is lifted (the others stay).
    settings: Settings = isolated_settings(tmp, signup_rate_burst=100_000, signup_rate_per_s=1000.0)
    provision(settings)
    try:
        with running("post.service", settings, tmp / "post.log") as post, \
                running("query.service", settings, tmp / "query.log") as query:
            resp = httpx.post(f"{post.url}/v1/users", json={"handle": f"fz_{uuid.uuid4().hex[:20]}"}, timeout=10)
            assert resp.status_code == 201, resp.text
            user = resp.json()
            yield {"post": post.url, "query": query.url, "user_id": user["user_id"], "token": user["token"]}
    finally:
        drop(settings)


def _as_the_user(case: Any, world: dict[str, Any]) -> None:
    """Most cases act as the world's user (its valid token, and half of them its own id in
    the path) so they get past authentication; the rest keep what was generated."""
    seed = len(repr(case.path_parameters)) + len(repr(case.body)) + len(repr(case.query))
    if seed % 4 == 0:
        return
    if case.path_parameters and "user_id" in case.path_parameters and seed % 2:
        case.path_parameters["user_id"] = world["user_id"]
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {world['token']}"}


def _check(case: Any, service: str, world: dict[str, Any]) -> None:
    if case.operation.definition.raw.get("security"):
        _as_the_user(case, world)
    response = case.call(base_url=world[service], timeout=15)
    SEEN[(service, case.method, case.operation.path, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        content_type = response.headers.get("content-type") or [""]
        assert content_type[0] == PROBLEM_JSON, (case.method, case.path, response.text)
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail.strip(), (case.method, case.path, response.text)


@post_schema.exclude(path="/metrics").parametrize()
@FUZZ
def test_post_service_fuzz(case: Any, world: dict[str, Any]) -> None:
    _check(case, "post", world)


# The live stream never ends (a fuzzed GET would hang): tests/integration/test_live.py tests it.
@query_schema.exclude(path=["/metrics", "/v1/users/{user_id}/timelines/home/stream"]).parametrize()
@FUZZ
def test_query_service_fuzz(case: Any, world: dict[str, Any]) -> None:
    _check(case, "query", world)


def test_the_fuzz_got_past_validation_and_authentication() -> None:
    """Not only 4xx: each service's main operations answered success too (else the fuzz
    would only be exercising the request checks)."""
    if os.environ.get("TL_FUZZ_VERBOSE"):
        print("\n".join(f"{n:5d} {k}" for k, n in sorted(SEEN.items())))
    reached = {(svc, method, path) for (svc, method, path, status), _ in SEEN.items() if status < 300}
    for op in [("post", "POST", "/v1/users"), ("post", "POST", "/v1/tweets"),
               ("query", "GET", "/v1/users/{user_id}/timelines/home"), ("query", "GET", "/v1/users/{user_id}/tweets")]:
        assert op in reached, (op, sorted(SEEN.items()))
