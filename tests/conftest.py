"""Session-wide hooks: which cluster tests are collected (below), and tests marked ``last`` run after every other test.

When such a test is selected (``tests/integration/test_default_namespace.py``), the servers
are made sure of and the broker's state outside the test namespaces is recorded before the
first test runs (``SNAPSHOT``, see ``tests/integration/namespace_guard.py``), so that test
can tell what the whole session did to the service's own namespace.
"""
from __future__ import annotations

import os

import pytest

from tests.integration.namespace_guard import SNAPSHOT


# tests/cluster starts private clusters of real servers (minutes each): collected only with
# TL_CLUSTER_TESTS=1 (all of them: ./dev test-cluster) or =short (those marked ``short``,
# the form CI runs after the rest: ./dev test).
CLUSTER_TESTS = os.environ.get("TL_CLUSTER_TESTS", "")
collect_ignore_glob = [] if CLUSTER_TESTS in ("1", "short") else ["cluster/*"]
# tests/regions (issue 17) likewise, with TL_REGION_TESTS=1|short.
REGION_TESTS = os.environ.get("TL_REGION_TESTS", "")
if REGION_TESTS not in ("1", "short"):
    collect_ignore_glob.append("regions/*")


def keep_short_tests(config: pytest.Config, items: list[pytest.Item], marker: str) -> None:
    """Of the tests marked ``marker`` (cluster, regions), only those also marked ``short``."""
    keep = [item for item in items if not item.get_closest_marker(marker) or item.get_closest_marker("short")]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CLUSTER_TESTS == "short":
        keep_short_tests(config, items, "cluster")
    if REGION_TESTS == "short":
        keep_short_tests(config, items, "regions")
    last = [item for item in items if item.get_closest_marker("last")]
    if not last:
        return
    items[:] = [item for item in items if not item.get_closest_marker("last")] + last
    try:
        from ops.schema import run_sync
        from localenv.services import ensure_up
        from settings import get_settings
        from tests.integration.namespace_guard import snapshot

        ensure_up(get_settings())
        config.stash[SNAPSHOT] = run_sync(snapshot(get_settings()))
    except Exception as exc:  # noqa: BLE001 - reported by the test that needs it
        config.stash[SNAPSHOT] = exc
