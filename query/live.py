"""One Redis pub/sub connection per query-service process, shared by its open streams.

The hub subscribes to a channel (``sinks/redis_live.py``) while at least one open stream
of this process needs it - its user's channel, and the channels of the celebrities the
user follows - and hands each notice to those streams (:meth:`Listener.notify`). Every
stream is also told about celebrity transitions (it may need other author channels).

If the pub/sub connection breaks, notices published meanwhile are lost: once it is back
(redis-py subscribes again to every channel when it reconnects), every stream is woken
to read its timeline since its position, which repairs what was missed.

Once a second the hub sweeps its streams, a slice every tenth of it (:meth:`Listener.tick`):
their heartbeats, send timeouts and activity marks are decided there, with no timer per
stream (``query/stream.py``).

On a Redis Cluster (classic pub/sub: a PUBLISH reaches every node) the hub subscribes on one
node, any of them; when that node fails it moves to the next one the cluster knows (or the
next startup node) and subscribes there again to every channel it needs.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable, Protocol

from redis.asyncio import Redis

from api.common import cancel_task
from policies.stream import Notice, decode_notice
from settings import Settings
from sinks.redis_client import REDIS_ERRORS, is_cluster, startup_nodes
from sinks.redis_live import LiveChannels

try:  # what redis-py's hiredis reader returns for an incomplete reply (redis-py >= 5)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - another redis-py: hiredis's own default
    _NOT_ENOUGH_DATA = False

log = logging.getLogger(__name__)

RECONNECT_S = 1.0
TICK_S = 1.0  # every open stream's clocks are checked this often ...
TICK_SLICES = 10  # ... a slice of them at a time: no pause of the loop for all of them at once
READ_CONCURRENCY = 32


class Listener(Protocol):
    def notify(self, notice: Notice) -> None: ...

    def tick(self, now: float) -> None: ...


class LiveHub:
    def __init__(self, settings: Settings, channels: LiveChannels) -> None:
        self.settings = settings
        self.channels = channels
        self._tries = 0  # on a cluster: connections made so far (which node is next)
        # Its own connection: a subscribed connection can run no other command.
        self._redis = self._connect()
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._subs: dict[str, set[Listener]] = {}
        self.listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.connected = False
        self.notices = 0
        self.drained = 0  # of them, parsed from the connection's buffer (_drain)
        # Streams' reads at once (a celebrity's tweet wakes every follower's stream together;
        # the Redis pool and Cassandra see at most this many of them).
        self.reads = asyncio.Semaphore(READ_CONCURRENCY)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._ticker = loop.create_task(self._tick())

    async def stop(self) -> None:
        await cancel_task(self._ticker)
        await cancel_task(self._task)
        try:
            await self._pubsub.aclose()
        finally:
            await self._redis.aclose()

    def _connect(self) -> Redis:
        options = dict(socket_connect_timeout=2.0, health_check_interval=30)
        if not self.settings.redis_cluster:
            return Redis.from_url(self.settings.redis_url, **options)
        client = self.channels.redis
        known = [(n.host, n.port) for n in client.get_nodes()] if is_cluster(client) else []
        nodes = known or startup_nodes(self.settings.redis_url)
        host, port = nodes[self._tries % len(nodes)]
        self._tries += 1
        return Redis(host=host, port=port, **options)

    async def _next_node(self) -> None:
        """On a cluster: the subscribed node failed; subscribe on another one."""
        async with self._lock:
            old, old_redis = self._pubsub, self._redis
            self._redis = self._connect()
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            for closing in (old.aclose(), old_redis.aclose()):
                try:
                    await closing
                except (*REDIS_ERRORS, OSError):
                    pass

    async def _run(self) -> None:
        while True:
            try:
                async with self._lock:
                    # A new node (cluster) knows none of our channels; redis-py subscribes
                    # again on a reconnect to the same server.
                    again = list(self._subs) if self.settings.redis_cluster else []
                    await self._pubsub.subscribe(self.channels.celebrities(), *again)
                if not self.connected:
                    self.connected = True
                    self._wake_all()  # notices may have been lost while it was down
                while True:
                    message = await self._pubsub.get_message(timeout=5.0)
                    if message is not None:
                        self._on_message(message)
                        await self._drain()
            except asyncio.CancelledError:
                raise
            except (*REDIS_ERRORS, OSError) as exc:
                if self.connected:
                    log.warning("live pub/sub connection lost: %r; reconnecting", exc)
                self.connected = False
                await asyncio.sleep(RECONNECT_S)
                if self.settings.redis_cluster:
                    await self._next_node()

    async def _tick(self) -> None:
        """Every stream's clocks once per ``TICK_S``, in ``TICK_SLICES`` slices spread over it
        (10,000 streams at once held the loop for ~2-18 ms: the idle events' tail)."""
        while True:
            listeners = list(self.listeners)
            size = max(1, -(-len(listeners) // TICK_SLICES))
            for start in range(0, max(1, len(listeners)), size):
                await asyncio.sleep(TICK_S / TICK_SLICES)
                now = time.monotonic()
                for listener in listeners[start:start + size]:
                    try:
                        listener.tick(now)
                    except Exception:  # noqa: BLE001 - one stream's fault must not stop the others' clocks
                        log.exception("a stream's tick failed")

    async def _drain(self) -> None:
        """Dispatch the messages the connection has already read and buffered, each parsed
        straight from hiredis's reader: ``get_message``'s machinery per call (a timeout
        context, the retry wrapper, the health check) was ~30% of the main thread's samples
        with 1,000 open streams at ~1,900 stream events/s, where stage 2's notices arrive in
        bursts. Other replies (subscription confirmations) go through redis-py's
        ``handle_message``, which keeps its state. Without hiredis (or if redis-py's internals
        change) nothing is drained here and ``get_message`` reads everything, as before."""
        reader = getattr(getattr(self._pubsub.connection, "_parser", None), "_reader", None)
        has_data = getattr(reader, "has_data", None)
        while has_data is not None and has_data():
            reply = reader.gets()
            if reply is _NOT_ENOUGH_DATA or reply is False:
                return  # a partial reply: get_message reads the rest
            if isinstance(reply, Exception):
                raise reply
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                self.drained += 1
                self._dispatch(reply[1], reply[2])
                continue
            message = await self._pubsub.handle_message(reply, ignore_subscribe_messages=True)
            if message is not None:
                self._on_message(message)

    def _on_message(self, message: dict) -> None:
        """A reply as redis-py's pub/sub hands it over: a published message is dispatched."""
        if message.get("type") == "message":
            self._dispatch(message["channel"], message["data"])

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
            except (*REDIS_ERRORS, OSError) as exc:  # resubscribed on reconnect: harmless
                log.warning("live unsubscribe failed: %r", exc)

    def subscribed(self) -> int:
        return len(self._subs)
