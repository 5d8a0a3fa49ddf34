"""The worker's Redis client gives a call up when the server stops answering.

Redis behind a link that goes half-open (``tcp_proxy.TcpProxy.blackhole``: no reset, as a
partition or a paused server looks): a write of stage 2 waiting on it fails with Redis's
``TimeoutError`` (transient: the batch's retry loop takes it, and the health check hears of
it) after ``TL_REDIS_TIMEOUT_S`` (redis-py 8 has a default of 5 s; older ones wait for as long
as the kernel keeps the connection); once the link answers again, the next write goes through.
"""
from __future__ import annotations

import asyncio
import time
import urllib.parse

import pytest
from redis.exceptions import TimeoutError as RedisTimeout

from agents.sinks import Sinks
from ops.schema import apply_cassandra
from sinks.redis_timeline import member
from tests.integration.pipeline_harness import drop, isolated_settings
from tests.integration.tcp_proxy import TcpProxy


async def test_a_worker_write_on_a_silent_redis_is_given_up(tmp_path) -> None:
    base = isolated_settings(tmp_path)
    apply_cassandra(base)
    url = urllib.parse.urlsplit(base.redis_url)
    proxy = await TcpProxy(url.hostname or "127.0.0.1", url.port or 6379).start()
    settings = base.replace(redis_url=url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl(), redis_timeout_s=1.5)
    with pytest.raises(ValueError, match="TL_REDIS_TIMEOUT_S"):
        base.replace(redis_timeout_s=0.5)  # not above TL_REDIS_WAIT_MS (1,000 ms)
    sinks = await Sinks.open(settings)
    timelines = sinks.timelines
    try:
        await sinks.redis.zadd(timelines.key(1), {member(0, 0): 0})
        await timelines.push_many({1: [(5, 9)]})
        proxy.blackhole()
        began = time.monotonic()
        stuck = asyncio.ensure_future(timelines.push_many({1: [(6, 9)]}))
        done, _ = await asyncio.wait([stuck], timeout=10)
        assert done, "the write still waits on the silent link"
        with pytest.raises(RedisTimeout):
            stuck.result()
        assert 1.5 <= time.monotonic() - began < 4.5, "TL_REDIS_TIMEOUT_S, not redis-py's default (5 s)"
        proxy.heal()
        await timelines.push_many({1: [(7, 9)]})
        got = [m.decode() for m in await sinks.redis.zrange(timelines.key(1), 0, -1)]
        assert member(5, 9) in got and member(7, 9) in got
    finally:
        await sinks.close()
        await proxy.stop()
        drop(base)
