"""One Redis pub/sub connection per query-service process, shared by its open streams.

The hub subscribes to a channel (``sinks/redis_live.py``) while at least one open stream
of this process needs it - its user's channel, and the channels of the celebrities the
user follows - and hands each notice to those streams (:meth:`Listener.notify`). Every
stream is also told about celebrity transitions (it may need other author channels).

If the pub/sub connection breaks, notices published meanwhile are lost: once it is back
(redis-py subscribes again to every channel when it reconnects), every stream is woken
to read its timeline since its position, which repairs what was missed.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Iterable, Protocol

import redis.exceptions
from redis.asyncio import Redis

from api.common import cancel_task
from policies.stream import Notice, decode_notice
from sinks.redis_live import LiveChannels

log = logging.getLogger(__name__)

RECONNECT_S = 1.0
READ_CONCURRENCY = 32


class Listener(Protocol):
    def notify(self, notice: Notice) -> None: ...


class LiveHub:
    def __init__(self, redis_url: str, channels: LiveChannels) -> None:
        # Its own connection: a subscribed connection can run no other command.
        self._redis = Redis.from_url(redis_url, socket_connect_timeout=2.0, health_check_interval=30)
        self.channels = channels
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._subs: dict[str, set[Listener]] = {}
        self.listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.connected = False
        self.notices = 0
        # Streams' reads at once (a celebrity's tweet wakes every follower's stream together;
        # the Redis pool and Cassandra see at most this many of them).
        self.reads = asyncio.Semaphore(READ_CONCURRENCY)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_task(self._task)
        try:
            await self._pubsub.aclose()
        finally:
            await self._redis.aclose()

    async def _run(self) -> None:
        while True:
            try:
                async with self._lock:
                    await self._pubsub.subscribe(self.channels.celebrities())
                if not self.connected:
                    self.connected = True
                    self._wake_all()  # notices may have been lost while it was down
                while True:
                    message = await self._pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                if self.connected:
                    log.warning("live pub/sub connection lost: %r; reconnecting", exc)
                self.connected = False
                await asyncio.sleep(RECONNECT_S)

    def _wake_all(self) -> None:
        for listener in list(self.listeners):
            listener.notify(Notice(reset=True))

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        try:
            notice = decode_notice(data)
        except (ValueError, TypeError) as exc:
            log.warning("ignored a malformed notice on %s: %r", name, exc)
            return
        self.notices += 1
        targets = self.listeners if name == self.channels.celebrities() else self._subs.get(name, ())
        for listener in list(targets):
            listener.notify(notice)

    async def subscribe(self, listener: Listener, channels: Iterable[str]) -> None:
        self.listeners.add(listener)
        new = []
        for channel in channels:
            subs = self._subs.setdefault(channel, set())
            if not subs:
                new.append(channel)
            subs.add(listener)
        if new:
            async with self._lock:
                await self._pubsub.subscribe(*new)

    async def unsubscribe(self, listener: Listener, channels: Iterable[str], *, leaving: bool = False) -> None:
        if leaving:
            self.listeners.discard(listener)
        old = []
        for channel in channels:
            subs = self._subs.get(channel)
            if subs is None:
                continue
            subs.discard(listener)
            if not subs:
                del self._subs[channel]
                old.append(channel)
        if old:
            try:
                async with self._lock:
                    await self._pubsub.unsubscribe(*old)
            except (redis.exceptions.RedisError, OSError) as exc:  # resubscribed on reconnect: harmless
                log.warning("live unsubscribe failed: %r", exc)

    def subscribed(self) -> int:
        return len(self._subs)
