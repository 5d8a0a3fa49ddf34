"""Integration tests talk to the real servers of ``python -m localenv up``.

Every test in this folder is marked ``integration`` automatically, and the
session-wide ``services`` fixture (autouse) makes sure the servers answer and the
schemas exist before the first test runs - starting them if needed.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from localenv.services import ensure_up
from localenv.worker import free_port
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


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """(URL, process) of a ``redis-server`` of this test's own (the Debian package's, on a
    free loopback port, no persistence, ``allkeys-lru``): flush it, starve it or kill it
    without touching the Redis that other tests share (never FLUSHALL 127.0.0.1:6379)."""
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--maxmemory-policy", "allkeys-lru"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    end = time.monotonic() + 10
    import redis as sync_redis

    while True:
        try:
            sync_redis.Redis.from_url(url).ping()
            break
        except sync_redis.ConnectionError:
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)
    yield url, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)
