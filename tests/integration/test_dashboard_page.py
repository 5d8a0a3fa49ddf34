"""The dashboard page (ops/monitoring/page.py) in headless Chromium while a load runs: the
stack ``./dev up`` starts (a real worker, Post and query services, the exporters and a real
Prometheus, Debian's), in a namespace of its own; every panel must end up showing a number
or a line, not an empty box, and refresh by itself.

``TL_DASHBOARD_SCREENSHOT=<seconds>`` also writes the page to docs/dashboard.png after that
much more load.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from localenv.stack import Stack, StackPorts
from ops.monitoring.page import page_config
from tests.integration.pipeline_harness import drop, isolated_settings

pytestmark = [pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
# The flags that work on this kind of machine (no sandbox as root, no network but localhost).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


class Load:
    """Users who follow each other, post and read their home timelines, until stopped."""

    def __init__(self, post: str, query: str, users: int = 6) -> None:
        self.post, self.query, self.stop = post, query, threading.Event()
        self.users: list[dict[str, Any]] = []
        self.errors: list[str] = []
        with httpx.Client(timeout=10) as client:
            for _ in range(users):
                resp = client.post(f"{post}/v1/users", json={"handle": f"db_{uuid.uuid4().hex[:20]}"})
                resp.raise_for_status()
                self.users.append({**resp.json(), "auth": {"Authorization": f"Bearer {resp.json()['token']}"}})
            for a in self.users:
                for b in self.users:
                    if a is not b:
                        client.post(f"{post}/v1/users/{a['user_id']}/following", headers=a["auth"],
                                    json={"target_user_id": b["user_id"]}).raise_for_status()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                user = self.users[n % len(self.users)]
                n += 1
                try:
                    if n % 3 == 0:
                        client.post(f"{self.post}/v1/tweets", headers=user["auth"], json={"text": f"tweet {n}"})
                    client.get(f"{self.query}/v1/users/{user['user_id']}/timelines/home", headers=user["auth"])
                    client.get(f"{self.query}/v1/users/{user['user_id']}/tweets")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.stop.wait(0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, services: Any) -> Iterator[dict[str, Any]]:
    """``./dev up``'s code (``localenv.stack``) in a namespace of its own on free ports: the
    worker, both services, the exporters, Prometheus and the dashboard page."""
    state = tmp_path_factory.mktemp("dashboard")
    settings = isolated_settings(state, signup_rate_burst=100_000, signup_rate_per_s=1000.0)
    stack = Stack(settings, state=state, ports=StackPorts.free())
    try:
        stack.up(seed=False, echo=lambda line: None)
        load = Load(stack.post.url, stack.query.url)
        load.thread.start()
        try:
            yield {"page": stack.dashboard, "prometheus": stack.prometheus, "load": load}
        finally:
            load.stop.set()
            load.thread.join(15)
    finally:
        stack.down(echo=lambda line: None)
        drop(settings)


def test_the_page_proxies_prometheus_and_serves_its_panels(stack: dict[str, Any]) -> None:
    url = stack["page"].url
    config = httpx.get(f"{url}/config.json").json()
    titles = [row["title"] for row in config["rows"]]
    assert titles[-1] == "Alerts firing" and {"Write path", "Fanout", "Read path"} <= set(titles)
    resp = httpx.get(f"{url}/api/v1/query", params={"query": "up"})
    assert resp.status_code == 200 and resp.json()["status"] == "success"
    assert httpx.get(f"{url}/api/v1/query", params={"query": "up{"}).status_code == 400
    assert httpx.get(f"{url}/../page.py").status_code == 404
    assert httpx.get(f"{url}/vendor/uPlot.iife.min.js").status_code == 200


def test_every_panel_shows_a_number_or_a_line_under_load(stack: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    panels = [p["id"] for row in page_config()["rows"] for p in row["panels"]]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.goto(stack["page"].url + "/")
            deadline = time.monotonic() + 120
            states: dict[str, str] = {}
            while time.monotonic() < deadline:
                states = page.evaluate(
                    "() => Object.fromEntries([...document.querySelectorAll('.panel')]"
                    ".map(p => [p.dataset.id, p.dataset.state]))")
                if states and all(s == "ok" for s in states.values()):
                    break
                page.wait_for_timeout(1000)
            assert sorted(states) == sorted(panels)
            assert {k: v for k, v in states.items() if v != "ok"} == {}, (states, console, stack["load"].errors[:3])
            # A line is a drawn chart with points; a number is a stat or the alert count.
            charts = page.locator(".panel.timeseries canvas").count()
            assert charts == len(page.locator(".panel.timeseries").all())
            refreshes = int(page.evaluate("document.body.dataset.refreshes"))
            page.wait_for_timeout(6000)
            assert int(page.evaluate("document.body.dataset.refreshes")) > refreshes, "the page stopped refreshing"
            assert not console, console
            if os.environ.get("TL_DASHBOARD_SCREENSHOT"):
                page.wait_for_timeout(1000 * float(os.environ["TL_DASHBOARD_SCREENSHOT"]))  # longer lines
                page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
