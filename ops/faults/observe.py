"""What the fault suite watches while it runs: per-partition consumer lag (and the wait for it
to reach zero), and the newest delivered tweet of users, read straight from Cassandra."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from ops.lag import committed_offsets, pipeline_topics
from settings import Settings


async def partition_lag(settings: Settings) -> dict[str, int]:
    """"topic[partition]" -> messages not committed by the group, for partitions behind."""
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs(), request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(**settings.kafka_kwargs(), enable_auto_commit=False,
                                request_timeout_ms=5000)
    await admin.start()
    try:
        await consumer.start()
        committed = await committed_offsets(admin, settings)
        tps = [TopicPartition(t, p) for t in pipeline_topics(settings) for p in range(settings.topic_partitions)]
        ends = await consumer.end_offsets(tps)
        out = {}
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            if ends[tp] > done:
                out[f"{tp.topic}[{tp.partition}]"] = ends[tp] - done
        return out
    finally:
        await consumer.stop()
        await admin.close()


async def wait_zero_lag(settings: Settings, timeout: float, check: Callable[[], None]) -> tuple[float, dict]:
    """Seconds until every partition is caught up (zero lag on two looks 2 s apart);
    raises TimeoutError naming the partitions still behind."""
    began = time.monotonic()
    zero_since = None
    last: dict = {}
    while time.monotonic() - began < timeout:
        check()
        try:
            last = await asyncio.wait_for(partition_lag(settings), 15.0)
        except Exception as exc:  # noqa: BLE001 - Kafka still coming back
            last = {"error": repr(exc)}
            zero_since = None
            await asyncio.sleep(1.0)
            continue
        if not last:
            if zero_since is None:
                zero_since = time.monotonic()
            elif time.monotonic() - zero_since >= 2.0:
                return round(zero_since - began, 2), {}
        else:
            zero_since = None
        await asyncio.sleep(0.5)
    raise TimeoutError(f"partitions stuck (lag not back to 0 after {timeout:.0f}s): {last}")


class Observer:
    """Reads the newest delivered tweet of users straight from Cassandra ``user_timeline``,
    on a session of its own that reconnects every 0.5 s (so the suite's own driver does not
    add its back-off to the recovery it measures)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cluster: Any = None
        self._session: Any = None
        self._stmt: Any = None
        self._failures = 0

    def _connect(self) -> None:
        from cassandra.policies import ConstantReconnectionPolicy

        from ops.schema import cassandra_cluster

        cluster = cassandra_cluster(self.settings, connect_timeout=3.0)
        cluster.reconnection_policy = ConstantReconnectionPolicy(0.5)
        session = cluster.connect(self.settings.cassandra_keyspace)
        self._stmt = session.prepare(
            "SELECT tweet_id FROM user_timeline WHERE user_id = ? LIMIT 1")
        self._cluster, self._session = cluster, session

    def _newest(self, users: list[int]) -> list[int | None]:
        if self._session is None:
            self._connect()
        try:
            futures = [self._session.execute_async(self._stmt, (u,), timeout=3.0) for u in users]
            out = []
            for fut in futures:
                row = fut.result().one()
                out.append(row.tweet_id if row else None)
            self._failures = 0
            return out
        except Exception:
            self._failures += 1
            if self._failures >= 3:  # start over: a new session finds a restarted server at once
                self.close()
            raise

    async def newest(self, users: list[int]) -> list[int | None]:
        return await asyncio.to_thread(self._newest, users)

    def close(self) -> None:
        cluster, self._cluster, self._session, self._failures = self._cluster, None, None, 0
        if cluster is not None:
            cluster.shutdown()
