"""What the pipelined connection sends and raises, without a server (``sinks/redis_pipelined.py``)."""
from __future__ import annotations

import hiredis
import pytest
import redis.exceptions
from redis.asyncio.connection import Connection

from settings import Settings
from sinks.redis_pipelined import PipelinedRedis, pack, reply_error


def test_pack_is_redis_pys_encoding() -> None:
    args = ["EVALSHA", "ab" * 20, 2, b"k\xff1", "k2", 3.5, -7, "é", ""]
    assert pack(args) == b"".join(Connection().pack_command(*args))


def test_pack_refuses_what_redis_py_refuses() -> None:
    for bad in (True, None, [1]):
        with pytest.raises(redis.exceptions.DataError):
            pack(["SET", "k", bad])


def test_error_replies_become_redis_pys_exceptions() -> None:
    reader = hiredis.Reader()
    reader.feed(b"-NOSCRIPT No matching script. Please use EVAL.\r\n-OOM command not allowed\r\n-ERR boom\r\n")
    kinds = [type(reply_error(reader.gets())) for _ in range(3)]
    assert kinds == [redis.exceptions.NoScriptError, redis.exceptions.OutOfMemoryError, redis.exceptions.ResponseError]


@pytest.mark.parametrize("url, cluster, served", [
    ("redis://127.0.0.1:6379/0", False, True),
    ("redis://:pw@10.0.0.5/2", False, True),
    ("redis://127.0.0.1:7000,127.0.0.1:7001/0", True, False),  # a cluster: redis-py
    ("rediss://127.0.0.1:6379/0", False, False),  # TLS: redis-py
    ("unix:///run/redis.sock", False, False),  # a socket: redis-py
])
def test_which_urls_it_serves(url, cluster, served) -> None:
    got = PipelinedRedis.for_settings(Settings(redis_url=url, redis_cluster=cluster), timeout_s=1, connect_timeout_s=1)
    assert (got is not None) == served
    if url == "redis://:pw@10.0.0.5/2":
        assert (got.host, got.port, got.db, got.password) == ("10.0.0.5", 6379, 2, "pw")
