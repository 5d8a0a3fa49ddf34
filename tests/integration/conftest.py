"""Integration tests talk to the real servers of ``python -m ops.services up``.

Every test in this folder is marked ``integration`` automatically, and the
session-wide ``services`` fixture (autouse) makes sure the servers answer and the
schemas exist before the first test runs - starting them if needed.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from ops.services import ensure_up
from settings import Settings, get_settings

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def services() -> Settings:
    """The settings of the running servers (started once per session if need be)."""
    settings = get_settings()
    ensure_up(settings)
    return settings
