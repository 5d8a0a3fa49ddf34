"""The cluster topology's tests (``tests/cluster/``): private clusters of real servers, started
by the tests themselves. Marked ``cluster``; skipped unless ``TL_CLUSTER_TESTS=1``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: starts a private cluster of real servers (TL_CLUSTER_TESTS=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TL_CLUSTER_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="cluster tests run with TL_CLUSTER_TESTS=1")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)
