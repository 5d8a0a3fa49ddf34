"""One pipelined connection to one Redis server, for the query service's hottest call.

Nearly every request of the query service is a cache hit, and a cache hit is one script
call (``query/view.py``'s ``_OPEN``). Through redis-py that call costs ~0.2 ms of Python CPU
on top of what Redis does: a connection taken from the pool and given back, the command
packed argument by argument, a retry wrapper and a timeout context per call, the reply read
through two layers of parser. ``python -m bench.redis_client_cost`` measures both clients on
the same script. :class:`PipelinedRedis` sends the same ``EVALSHA`` over one connection of its
own - an ``asyncio.Protocol`` that feeds what arrives to hiredis's reader and hands each reply
to the oldest waiting call (Redis answers in order), so concurrent calls share the connection
and its writes - and answers exactly what redis-py answers (redis-py with hiredis returns
hiredis's replies as they are).

What it keeps of redis-py's behaviour, so that callers handle failures as before
(``query/reader.py`` falls back to Cassandra on any of ``REDIS_ERRORS``):

* an error reply raises redis-py's class for it (``ResponseError`` and its subclasses);
  ``NOSCRIPT`` (Redis restarted or its scripts flushed) loads the script and sends the call
  again, as redis-py's ``Script`` does;
* a connection that cannot be made or is lost raises ``redis.exceptions.ConnectionError``
  for every call waiting on it; the next call connects again;
* a call without an answer within ``timeout_s`` raises ``redis.exceptions.TimeoutError``; the
  connection is then closed (a later reply could not be matched to its call any more), and
  every call still waiting on it gets the same error;
* ``AUTH`` and ``SELECT`` from the URL (``redis://[[user]:password@]host[:port][/db]``).

Only for a plain TCP ``redis://`` URL on one server: :meth:`PipelinedRedis.for_settings`
returns None for a Redis Cluster, TLS or a Unix socket, and the callers use redis-py.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Sequence

import hiredis
import redis.exceptions
from redis._parsers.base import BaseParser
from redis.asyncio.connection import parse_url

from settings import Settings


def pack(args: Sequence[Any]) -> bytes:
    """A command in Redis's protocol (RESP): an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            b = arg
        elif isinstance(arg, str):
            b = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            b = repr(arg).encode()
        else:
            raise redis.exceptions.DataError(f"invalid argument {arg!r}: bytes, str, int or float")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def reply_error(error: Exception) -> redis.exceptions.ResponseError:
    """An error reply (hiredis's) as the exception redis-py raises for it."""
    return BaseParser.parse_error(str(error))


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: "PipelinedRedis") -> None:
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        # Per call sent and not answered yet, oldest first: its future and its deadline.
        self.waiting: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(redis.exceptions.ConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the connection is not ours to trust
                self.fail(redis.exceptions.ConnectionError("Redis sent a reply no call was waiting for"))
                return
            future, _ = waiting.popleft()
            if future.done():  # its caller was cancelled; the reply is consumed all the same
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(reply_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis.exceptions.ConnectionError(f"Connection to Redis lost: {exc!r}" if exc
                                                   else "Connection closed by Redis"))

    def send(self, packed: bytes, deadline: float) -> asyncio.Future:
        future = self.owner.loop.create_future()
        self.waiting.append((future, deadline))
        self.transport.write(packed)  # type: ignore[union-attr]
        if self.timer is None:
            self.timer = self.owner.loop.call_at(deadline, self.check_deadline)
        return future

    def check_deadline(self) -> None:
        """The oldest waiting call's deadline, checked when it was due: past it, the
        connection fails; else the check is due again at that call's deadline."""
        self.timer = None
        if not self.waiting or self.closed:
            return
        deadline = self.waiting[0][1]
        if deadline <= self.owner.loop.time():
            self.fail(redis.exceptions.TimeoutError(f"Timeout reading from Redis ({self.owner.timeout_s:g} s)"))
        else:
            self.timer = self.owner.loop.call_at(deadline, self.check_deadline)

    def fail(self, error: Exception) -> None:
        """Close the connection; every waiting call gets ``error`` (an instance each: a traceback
        is written into the exception it is raised with)."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        if self.owner.protocol is self:
            self.owner.protocol = None
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(type(error)(*error.args))


class PipelinedRedis:
    """Script calls (``EVALSHA``) over one pipelined connection (module doc)."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, timeout_s: float, connect_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.protocol: _Protocol | None = None
        self._connecting: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def for_settings(cls, settings: Settings, *, timeout_s: float, connect_timeout_s: float) -> "PipelinedRedis | None":
        """The connection for ``TL_REDIS_URL``, or None where redis-py must serve (module doc)."""
        if settings.redis_cluster:
            return None
        try:
            options = parse_url(settings.redis_url)
        except ValueError:
            return None
        if "connection_class" in options or "path" in options or "host" not in options:
            return None
        return cls(options["host"], int(options.get("port", 6379)), db=int(options.get("db", 0) or 0),
                   username=options.get("username"), password=options.get("password"),
                   timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def evalsha(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script(keys=keys, args=args)`` of a redis-py ``Script`` (its ``sha`` and ``script``)."""
        command = pack(["EVALSHA", script.sha, len(keys), *keys, *args])
        try:
            return await self.execute(command)
        except redis.exceptions.NoScriptError:
            await self.execute(pack(["SCRIPT", "LOAD", script.script]))
            return await self.execute(command)

    async def execute(self, packed: bytes) -> Any:
        """One packed command's reply (an error reply raised)."""
        protocol = self.protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await protocol.send(packed, self.loop.time() + self.timeout_s)

    async def _connect(self) -> _Protocol:
        """The connection, made once for every call that finds none (a task of its own, so a
        cancelled caller does not cancel it for the others)."""
        if self._connecting is None:
            loop = self._loop = asyncio.get_running_loop()
            self._connecting = loop.create_task(self._open(loop))
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Task) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here: a failure is raised to the callers that waited

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self.host, self.port), self.connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise redis.exceptions.ConnectionError(
                f"Error connecting to Redis at {self.host}:{self.port}: {exc!r}") from exc
        setup = []
        if self.password is not None:
            setup.append(["AUTH", *([self.username] if self.username else []), self.password])
        if self.db:
            setup.append(["SELECT", self.db])
        deadline = loop.time() + self.timeout_s
        try:
            for command in setup:
                await protocol.send(pack(command), deadline)
        except BaseException:
            protocol.fail(redis.exceptions.ConnectionError("Redis connection setup failed"))
            raise
        self.protocol = protocol
        return protocol

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self.protocol is not None:
            self.protocol.fail(redis.exceptions.ConnectionError("Connection closed by the client"))
        self.protocol = None
