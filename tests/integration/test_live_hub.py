"""The query service's pub/sub hub (``query/live.py``) against a real Redis: a burst of notices,
as stage 2 publishes them after a batch, reaches each stream in order, none lost or repeated,
most of them parsed from the connection's buffer (``LiveHub._drain``)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from policies.stream import Notice
from query.live import LiveHub
from sinks.redis_live import LiveChannels
from tests.integration.pipeline_harness import isolated_settings

pytestmark = [pytest.mark.integration]


class Recorder:
    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def notify(self, notice: Notice) -> None:
        if not notice.reset:  # the hub wakes every stream once it is connected: not a notice
            self.notices.append(notice)

    def tick(self, now: float) -> None:  # the hub's sweep of stream clocks: nothing to keep here
        pass


async def test_a_burst_of_notices_reaches_each_stream_in_order(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path)
    redis = Redis.from_url(settings.redis_url)
    channels = LiveChannels(redis, prefix=settings.redis_prefix)
    hub = LiveHub(settings, channels)
    await hub.start()
    users = {1: Recorder(), 2: Recorder()}
    try:
        for user, recorder in users.items():
            await hub.subscribe(recorder, [channels.user(user)])
        for _ in range(100):  # subscribed (the hub's own connection) before anything is published
            if all(n for _, n in await redis.pubsub_numsub(*(channels.user(u) for u in users))):
                break
            await asyncio.sleep(0.02)
        n = 400
        # Two bursts, each one pipeline of PUBLISHes (what sinks/redis_live.py sends after a batch).
        for burst in range(2):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(burst * n, (burst + 1) * n):
                    for user in users:
                        pipe.publish(channels.user(user), f'{{"a": [[{i}, {user}]]}}')
                await pipe.execute()
        for _ in range(500):
            if all(len(r.notices) >= 2 * n for r in users.values()):
                break
            await asyncio.sleep(0.01)
        for user, recorder in users.items():
            assert [nt.added for nt in recorder.notices] == [((i, user),) for i in range(2 * n)]
        assert hub.notices == 4 * n
        # The path under test ran: most of a burst came from the buffer, not one get_message each.
        assert hub.drained > n, hub.drained
    finally:
        await hub.stop()
        await redis.aclose()
