"""A secondary region's Post service (``post.forward``) in front of a real primary Post
service process (real Kafka, PostgreSQL, Redis): every request is answered by the primary,
unchanged; a primary that does not answer is a 503 that says nothing was written."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from localenv.worker import free_port
from settings import Settings
from tests.integration.pipeline_harness import drop, isolated_settings, provision
from tests.integration.post_fixtures import assert_problem, events_on, running_client, signup
from tests.integration.service_procs import running

pytestmark = [pytest.mark.integration]


def secondary(settings: Settings, primary_url: str) -> Settings:
    return settings.replace(region="b", region_role="secondary", primary_post_url=primary_url)


async def test_writes_are_forwarded_to_the_primary(tmp_path: Path, services: Any) -> None:
    settings = isolated_settings(tmp_path, signup_rate_burst=1000, signup_rate_per_s=100.0)
    provision(settings)
    try:
        with running("post.service", settings, tmp_path / "primary.log") as primary:
            async with running_client(secondary(settings, primary.url)) as region_b:
                alice = await signup(region_b)
                bob = await signup(region_b)
                resp = await region_b.post(f"/v1/users/{alice['user_id']}/following",
                                           json={"target_user_id": bob["user_id"]}, headers=alice["auth"])
                assert resp.status_code == 200, resp.text

                key = uuid.uuid4().hex
                first = await region_b.post("/v1/tweets", json={"text": "from region b"},
                                            headers={**bob["auth"], "Idempotency-Key": key})
                assert first.status_code == 201, first.text
                again = await region_b.post("/v1/tweets", json={"text": "from region b"},
                                            headers={**bob["auth"], "Idempotency-Key": key})
                assert again.status_code == 201 and again.json() == first.json()
                tweet_id = int(first.json()["tweet_id"])
                assert len(await events_on(settings, settings.topic_tweets, tweet_id=tweet_id)) == 1
                assert len(await events_on(settings, settings.topic_follows,
                                           follower_id=int(alice["user_id"]))) == 1

                # The primary's own errors come back as they are.
                assert_problem(await region_b.post("/v1/tweets", json={"text": "x"}), 401, "Bearer")
                resp = await region_b.get("/openapi.json")
                assert resp.status_code == 200 and "/v1/tweets" in resp.json()["paths"]

                assert (await region_b.get("/healthz")).status_code == 200
                metrics = (await region_b.get("/metrics")).text
                assert 'post_forwarded_total{outcome="answered"}' in metrics
    finally:
        drop(settings)


async def test_an_unreachable_primary_is_a_clear_503(tmp_path: Path, services: Any) -> None:
    settings = isolated_settings(tmp_path)
    async with running_client(secondary(settings, f"http://127.0.0.1:{free_port()}")) as region_b:
        resp = await region_b.post("/v1/tweets", json={"text": "lost?"}, headers={"Idempotency-Key": "k1"})
        body = assert_problem(resp, 503, "is unreachable")
        assert "nothing was written" in body["detail"] and resp.headers["retry-after"] == "5"
        health = await region_b.get("/healthz")
        assert health.status_code == 503 and not health.json()["checks"]["primary"]["ok"]
