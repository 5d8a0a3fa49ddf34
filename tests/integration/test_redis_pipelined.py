"""The query service's pipelined Redis connection (``sinks/redis_pipelined.py``) on a real Redis:
the same answers as redis-py, each concurrent call its own; a flushed script cache, an error
reply, a cancelled call, a killed connection, a wrong password and a server that never answers
each give redis-py's error (or the answer) and leave the next call working."""
from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.asyncio import Redis

from settings import Settings
from sinks.redis_pipelined import PipelinedRedis
from tests.integration.pipeline_harness import isolated_settings

# Nested replies of every kind redis-py gives back: bulk strings, integers, nil, arrays.
ECHO = """
return {ARGV[1], tonumber(ARGV[2]), false, {KEYS[1], {ARGV[1] .. '!', 7}}, redis.call('GET', KEYS[1])}
"""
FAILS = "return redis.error_reply('BADTHING ' .. ARGV[1])"
# Busy for ARGV[1] milliseconds (Redis answers nothing else meanwhile).
BUSY = """
local t = redis.call('TIME')
local until_us = t[1] * 1000000 + t[2] + ARGV[1] * 1000
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= until_us
return 1
"""


@pytest.fixture
async def private(private_redis):
    """(redis-py client, pipelined connection, server process) on a Redis of the test's own."""
    url, proc = private_redis
    redis, pipelined = Redis.from_url(url), client(url)
    yield redis, pipelined, proc
    await pipelined.aclose()
    await redis.aclose()


def client(url: str, timeout_s: float = 2.0) -> PipelinedRedis:
    pipelined = PipelinedRedis.for_settings(Settings(redis_url=url), timeout_s=timeout_s, connect_timeout_s=timeout_s)
    assert pipelined is not None
    return pipelined


async def test_answers_as_redis_py_each_concurrent_call_its_own(tmp_path) -> None:
    settings = isolated_settings(tmp_path)
    redis = Redis.from_url(settings.redis_url)
    pipelined = client(settings.redis_url)
    key = f"{settings.redis_prefix}echo"
    try:
        await redis.set(key, b"stored \xff")
        script = redis.register_script(ECHO)
        assert await pipelined.evalsha(script, [key], ["a", 1]) == await script(keys=[key], args=["a", 1])
        answers = await asyncio.gather(*(pipelined.evalsha(script, [key], [f"call {i}", i]) for i in range(300)))
        assert answers == [[f"call {i}".encode(), i, None, [key.encode(), [f"call {i}!".encode(), 7]], b"stored \xff"]
                           for i in range(300)]
    finally:
        await pipelined.aclose()
        await redis.delete(key)
        await redis.aclose()


async def test_a_flushed_script_cache_is_loaded_again(private) -> None:
    redis, pipelined, _ = private
    script = redis.register_script(ECHO)
    assert (await pipelined.evalsha(script, ["k"], ["x", 2]))[:2] == [b"x", 2]
    await redis.script_flush()
    assert not (await redis.script_exists(script.sha))[0]
    assert (await pipelined.evalsha(script, ["k"], ["y", 3]))[:2] == [b"y", 3]  # NOSCRIPT, loaded, sent again
    assert (await redis.script_exists(script.sha))[0]


async def test_an_error_reply_raises_redis_pys_error_and_the_connection_goes_on(private) -> None:
    redis, pipelined, _ = private
    fails, echo = redis.register_script(FAILS), redis.register_script(ECHO)
    with pytest.raises(ResponseError, match="BADTHING one"):
        await pipelined.evalsha(fails, [], ["one"])
    results = await asyncio.gather(pipelined.evalsha(echo, ["k"], ["before", 1]), pipelined.evalsha(fails, [], ["two"]),
                                   pipelined.evalsha(echo, ["k"], ["after", 2]), return_exceptions=True)
    assert results[0][:2] == [b"before", 1] and results[2][:2] == [b"after", 2]
    assert isinstance(results[1], ResponseError) and "BADTHING two" in str(results[1])


async def test_a_cancelled_call_leaves_the_replies_in_step(private) -> None:
    redis, pipelined, _ = private
    echo = redis.register_script(ECHO)
    await pipelined.evalsha(echo, ["k"], ["warm", 0])
    first = asyncio.ensure_future(pipelined.evalsha(echo, ["k"], ["cancelled", 1]))
    await asyncio.sleep(0)  # sent
    first.cancel()
    assert (await pipelined.evalsha(echo, ["k"], ["next", 2]))[:2] == [b"next", 2]
    assert first.cancelled()


async def test_a_lost_connection_fails_its_calls_and_the_next_call_connects_again(private) -> None:
    redis, pipelined, proc = private
    echo, busy = redis.register_script(ECHO), redis.register_script(BUSY)
    await pipelined.evalsha(echo, ["k"], ["x", 1])
    killed = await redis.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    await asyncio.sleep(0.05)  # the close reaches the client
    assert (await pipelined.evalsha(echo, ["k"], ["again", 2]))[:2] == [b"again", 2]  # connected again

    await busy(args=[1])  # loaded
    in_flight = [asyncio.ensure_future(pipelined.evalsha(busy, [], [400])),
                 asyncio.ensure_future(pipelined.evalsha(echo, ["k"], ["queued behind it", 3]))]
    await asyncio.sleep(0.1)  # both sent; Redis is inside the first
    proc.kill()
    proc.wait(10)
    results = await asyncio.gather(*in_flight, return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    with pytest.raises(RedisConnectionError):  # nothing listens: refused, promptly
        await pipelined.evalsha(echo, ["k"], ["gone", 4])


async def test_a_server_that_never_answers_times_out_every_waiting_call() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(-1)  # reads everything, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipelined = client(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)

    class Script:
        sha, script = "0" * 40, "return 1"
    try:
        began = time.monotonic()
        results = await asyncio.gather(*(pipelined.evalsha(Script, [], [i]) for i in range(5)), return_exceptions=True)
        waited = time.monotonic() - began
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert 0.25 <= waited < 2.0
        assert len(accepted) == 1  # one connection for all five
        with pytest.raises(RedisTimeoutError):  # a new connection, and the same answer
            await pipelined.evalsha(Script, [], [9])
        assert len(accepted) == 2
    finally:
        await pipelined.aclose()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


async def test_a_database_and_a_password_from_the_url(private_redis) -> None:
    url, _ = private_redis
    redis = Redis.from_url(url.rsplit("/", 1)[0] + "/3")
    try:
        script = redis.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
        db3 = client(url.rsplit("/", 1)[0] + "/3")
        try:
            assert await db3.evalsha(script, ["in-db-3"], ["yes"]) == b"OK"
        finally:
            await db3.aclose()
        assert await redis.get("in-db-3") == b"yes"
        host_port = url.split("//", 1)[1].rsplit("/", 1)[0]
        wrong = client(f"redis://:not-the-password@{host_port}/0")  # this Redis has none
        try:
            with pytest.raises(AuthenticationError, match="without any password configured"):  # as redis-py's
                await wrong.evalsha(script, ["k"], ["v"])
        finally:
            await wrong.aclose()
    finally:
        await redis.aclose()
