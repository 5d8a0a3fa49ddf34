"""Session-wide hooks: tests marked ``last`` run after every other test of the session.

When such a test is selected (``tests/integration/test_default_namespace.py``), the servers
are made sure of and the broker's state outside the test namespaces is recorded before the
first test runs (``SNAPSHOT``, see ``tests/integration/namespace_guard.py``), so that test
can tell what the whole session did to the service's own namespace.
"""
from __future__ import annotations

import pytest

from tests.integration.namespace_guard import SNAPSHOT


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
