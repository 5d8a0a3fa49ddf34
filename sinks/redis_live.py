"""Live notices on Redis pub/sub: what the stages wrote, for the open streams of the query service.

Channels (``policies/stream.py`` has the message, :class:`~policies.stream.Notice`):

* ``{prefix}live:u:<user>`` - stage 2 (``agents/deliver.py``) after it wrote a batch: the
  rows it added to the user's timeline, the deletes it applied, follows and unfollows,
  a rebuilt timeline;
* ``{prefix}live:a:<author>`` - stage 1 (``agents/fanout.py``) for a celebrity's pulled
  tweets and their deletes (they are in no follower's timeline; a stream listens on the
  channels of the celebrities its user follows);
* ``{prefix}live:celebrities`` - stage 1 when an author becomes or stops being a celebrity.

On a Redis Cluster this is the cluster's classic pub/sub: a PUBLISH (sent to the node of the
channel's slot) reaches the subscribers of every node, and ``PUBSUB NUMSUB`` is asked of every
node and summed; the query service's hub subscribes on any one node (``query/live.py``).

Redis is a cache here too: a publish is made once, after the stores were written, and a
failure is logged and counted, never retried or allowed to stall a batch. A lost notice
is repaired by the stream's next read since its position (the next notice, its periodic
check, or the client's reconnect with ``Last-Event-ID``).
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, Mapping

from prometheus_client import Counter
from redis.asyncio import Redis

from policies.stream import Notice, encode_notice
from sinks.redis_client import REDIS_ERRORS, is_cluster

log = logging.getLogger(__name__)

LIVE_PUBLISHED = Counter("timeline_live_notices_total", "Live notices published on Redis pub/sub, by result",
                         ["result"])


class LiveChannels:
    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def user(self, user_id: int) -> str:
        return f"{self.prefix}live:u:{user_id}"

    def author(self, author_id: int) -> str:
        return f"{self.prefix}live:a:{author_id}"

    def celebrities(self) -> str:
        return f"{self.prefix}live:celebrities"

    async def listening(self, channels: Iterable[str]) -> set[str]:
        """The channels somebody listens to: one ``PUBSUB NUMSUB`` for all of them.

        Most users have no open stream, and a PUBLISH costs this process ~40 us of CPU in
        redis-py (measured here; at 8,000 deliveries/s, one per user, a third of a core for
        streams nobody had open): notices are built, encoded and published only for these.
        No race is added: a stream subscribes before its first read, and a batch's writes
        precede this call, so a channel subscribed after the count is one whose read sees
        them. Best effort: an error is logged and counted, and nobody is told.
        """
        channels = list(channels)
        if not channels:
            return set()
        try:
            if is_cluster(self.redis):  # each node counts its own subscribers
                counts = await self.redis.pubsub_numsub(*channels, target_nodes=self.redis.ALL_NODES)
            else:
                counts = await self.redis.pubsub_numsub(*channels)
        except (*REDIS_ERRORS, OSError) as exc:
            LIVE_PUBLISHED.labels("failed").inc(len(channels))
            log.warning("live notices not published (%d): %r", len(channels), exc)
            return set()
        live = {c for c, (_, n) in zip(channels, counts) if n}
        LIVE_PUBLISHED.labels("no_listener").inc(len(channels) - len(live))
        return live

    async def listening_users(self, users: Iterable[int]) -> set[int]:
        by_channel = {self.user(u): u for u in users}
        return {by_channel[c] for c in await self.listening(by_channel)}

    async def publish(self, notices: Mapping[str, Notice]) -> None:
        """PUBLISH each notice whose channel somebody listens to (``listening``), best effort
        (see the module doc)."""
        notices = {c: n for c, n in notices.items() if not n.is_empty()}
        live = await self.listening(notices)
        await self._send({c: notices[c] for c in notices if c in live})

    async def publish_users(self, notices: Mapping[int, Notice]) -> None:
        """PUBLISH users' notices as they are: the caller kept those of ``listening_users``."""
        await self._send({self.user(u): n for u, n in notices.items() if not n.is_empty()})

    async def _send(self, notices: Mapping[str, Notice]) -> None:
        if not notices:
            return
        try:
            cluster = is_cluster(self.redis)
            now = time.time()
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel, notice in notices.items():
                    raw = encode_notice(notice._replace(sent_at=now))
                    if cluster:  # a cluster pipeline refuses publish(); the command routes by channel
                        pipe.execute_command("PUBLISH", channel, raw)
                    else:
                        pipe.publish(channel, raw)
                await pipe.execute()
        except (*REDIS_ERRORS, OSError) as exc:
            LIVE_PUBLISHED.labels("failed").inc(len(notices))
            log.warning("live notices not published (%d): %r", len(notices), exc)
            return
        LIVE_PUBLISHED.labels("published").inc(len(notices))
