"""The cluster topology's tests (issue 16): real three-node clusters in private folders and
ports, marked ``cluster``; they run only with ``TL_CLUSTER_TESTS=1``."""
from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: starts a private cluster of real servers (TL_CLUSTER_TESTS=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TL_CLUSTER_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="cluster tests run with TL_CLUSTER_TESTS=1")
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)
