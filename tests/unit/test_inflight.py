"""api.inflight.SharedFetches: callers of one key share one fetch (pure asyncio, no servers)."""
from __future__ import annotations

import asyncio

import pytest

from api.inflight import SharedFetches


async def test_callers_of_a_key_share_one_fetch_and_the_key_is_free_after() -> None:
    fetches: SharedFetches[str, int] = SharedFetches()
    runs = []
    gate = asyncio.Event()

    async def fetch() -> int:
        runs.append(1)
        await gate.wait()
        return 7

    first = fetches.start(["a", "b"], fetch())
    assert fetches.get("a") is first and fetches.get("b") is first and set(fetches) == {"a", "b"}
    waiting = [asyncio.ensure_future(asyncio.shield(fetches.get("a"))) for _ in range(5)]
    gate.set()
    assert await asyncio.gather(*waiting) == [7] * 5
    assert runs == [1]
    assert len(fetches) == 0 and fetches.get("a") is None


async def test_a_failure_reaches_every_caller_and_a_cancelled_caller_leaves_the_fetch_running() -> None:
    fetches: SharedFetches[str, int] = SharedFetches()
    gate = asyncio.Event()

    async def failing() -> int:
        await gate.wait()
        raise OSError("store down")

    task = fetches.start(["k"], failing())
    gone = asyncio.ensure_future(asyncio.shield(task))
    stays = asyncio.ensure_future(asyncio.shield(task))
    await asyncio.sleep(0)
    gone.cancel()
    gate.set()
    with pytest.raises(OSError):
        await stays
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert not task.cancelled() and len(fetches) == 0
