"""Logs a person can search (logs.py), from real processes: a request to the Post service
and to the query service leaves one JSON line with its request id, user, route template,
status and latency; the worker logs its batches as JSON lines of the same shape."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from localenv.worker import Worker, wait_for
from settings import Settings
from tests.integration.pipeline_harness import drop, isolated_settings, provision
from tests.integration.service_procs import running

pytestmark = [pytest.mark.integration]

COMMON = {"ts", "level", "service", "logger", "msg"}


def events(lines: list[str], event: str | None) -> list[dict[str, Any]]:
    """Every line must be one JSON object; those of ``event``."""
    parsed = []
    for line in lines:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    assert all(COMMON <= set(p) for p in parsed), parsed
    return [p for p in parsed if p.get("event") == event]


def test_requests_and_batches_are_json_lines(tmp_path: Path, services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings: Settings = isolated_settings(tmp_path)
    provision(settings)
    monkeypatch.setenv("TL_WORKER_LOG_LEVEL", "info")
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        with running("post.service", settings, tmp_path / "post.log", log_level="info") as post, \
                running("query.service", settings, tmp_path / "query.log", log_level="info") as query:
            given_id = f"test-{uuid.uuid4().hex}"
            resp = httpx.post(f"{post.url}/v1/users", json={"handle": f"lg_{uuid.uuid4().hex[:20]}"},
                              headers={"X-Request-Id": given_id}, timeout=10)
            assert resp.status_code == 201 and resp.headers["x-request-id"] == given_id
            user = resp.json()
            auth = {"Authorization": f"Bearer {user['token']}"}
            resp = httpx.post(f"{post.url}/v1/tweets", json={"text": "hello logs"}, headers=auth, timeout=10)
            assert resp.status_code == 201
            made_id = resp.headers["x-request-id"]
            resp = httpx.get(f"{query.url}/v1/users/{user['user_id']}/timelines/home", headers=auth, timeout=10)
            assert resp.status_code == 200
            resp = httpx.get(f"{query.url}/v1/users/0/tweets", timeout=10)
            assert resp.status_code == 422

            def request_lines(svc: Any) -> list[dict[str, Any]]:
                return [e for e in events(svc.log_lines(), "request") if e["route"] != "/healthz"]

            assert wait_for(lambda: len(request_lines(post)) == 2 and len(request_lines(query)) == 2, 10)
            signup, tweet = request_lines(post)
            assert (signup["request_id"], signup["user_id"], signup["route"], signup["status"], signup["method"]) == (
                given_id, user["user_id"], "/v1/users", 201, "POST")
            assert (tweet["request_id"], tweet["user_id"], tweet["route"]) == (made_id, user["user_id"], "/v1/tweets")
            assert len(made_id) == 32 and made_id != given_id
            home, bad = request_lines(query)
            assert (home["route"], home["status"], home["user_id"], home["service"]) == (
                "/v1/users/{user_id}/timelines/home", 200, user["user_id"], "query")
            assert (bad["route"], bad["status"], "user_id" in bad) == ("/v1/users/{user_id}/tweets", 422, False)
            assert not [e for e in events(post.log_lines() + query.log_lines(), None)
                        if e["logger"] == "uvicorn.access"], "uvicorn's access lines double the request events"
            for line in (signup, tweet, home, bad):
                assert isinstance(line["latency_ms"], float) and 0 <= line["latency_ms"] < 10_000
                assert line["level"] == "info" and line["ts"].endswith("Z")

        def fanout_batch() -> list[dict[str, Any]]:
            return [b for b in events(worker_lines(worker), "batch") if b["stage"] == "fanout"]

        assert wait_for(lambda: bool(fanout_batch()), 60), worker.log_tail()
        batch = fanout_batch()[0]
        assert batch["service"] == "worker" and batch["events"] >= 1 and batch["rows"] >= 1 and batch["ms"] >= 0
    finally:
        worker.stop()
        drop(settings)


def worker_lines(worker: Worker) -> list[str]:
    """The worker's log lines that are log records (Faust prints a start-up banner, which is not)."""
    return [line for line in worker.log_path.read_text(errors="replace").splitlines() if line.startswith("{")]
