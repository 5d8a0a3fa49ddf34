"""Consumer lag of the pipeline's consumer group: how far the agents are behind the log.

``LagMonitor`` keeps its Kafka clients open, for callers that poll often (the benchmark
samples lag over a whole phase); ``consumer_lag`` and ``wait_caught_up`` are the one-shot
forms of its ``lag`` and ``wait_zero``.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from schemas import source_topics
from settings import Settings


def pipeline_topics(settings: Settings) -> list[str]:
    return [*source_topics(settings), settings.topic_deliveries]


@dataclass
class CaughtUp:
    """How a wait for zero lag ended (times are ``time.time()``)."""

    began: float
    zero_at: float  # the first poll of the zero-lag run that held for ``settle`` s
    settled_at: float  # when that run had held long enough
    peak_lag: int
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s since ``began``, total lag) per poll

    @property
    def waited_s(self) -> float:
        return self.settled_at - self.began


async def committed_offsets(admin: AIOKafkaAdminClient, settings: Settings) -> dict[TopicPartition, Any]:
    """The committed offsets of the layout's consumer groups, each for the topics it consumes
    (``Settings.worker_groups``: one group, or one per role)."""
    committed: dict[TopicPartition, Any] = {}
    for group, topics in settings.worker_groups().items():
        offsets = await admin.list_consumer_group_offsets(group)
        committed.update({tp: meta for tp, meta in offsets.items() if tp.topic in topics})
    return committed


class LagMonitor:
    """The app's consumer group's lag on ``topics`` (default: the pipeline's), with long-lived clients.

    ``async with LagMonitor(settings) as monitor: ...``, or ``start()`` and ``stop()``.
    """

    def __init__(self, settings: Settings, topics: Iterable[str] | None = None) -> None:
        self.settings = settings
        self.topics = list(topics or pipeline_topics(settings))
        self.admin: AIOKafkaAdminClient | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def start(self) -> "LagMonitor":
        self.admin = AIOKafkaAdminClient(**self.settings.kafka_kwargs())
        await self.admin.start()
        self.consumer = AIOKafkaConsumer(**self.settings.kafka_kwargs(), enable_auto_commit=False)
        await self.consumer.start()
        return self

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.admin is not None:
            await self.admin.close()

    async def __aenter__(self) -> "LagMonitor":
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        """Every partition of ``topics``; KafkaError if one has none (does it exist?)."""
        cluster = await self.consumer._client.fetch_all_metadata()  # noqa: SLF001 - no public call
        tps = []
        for t in topics:
            partitions = cluster.partitions_for_topic(t)
            if not partitions:
                raise KafkaError(f"topic {t!r} has no partitions (does it exist?)")
            tps.extend(TopicPartition(t, p) for p in sorted(partitions))
        return tps

    async def lag(self) -> dict[str, int]:
        """Messages not yet committed by the app's consumer group, per topic."""
        if not self._tps:
            self._tps = await self.partitions(self.topics)
        committed = await committed_offsets(self.admin, self.settings)
        ends = await self.consumer.end_offsets(self._tps)
        lag: dict[str, int] = {t: 0 for t in self.topics}
        for tp in self._tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag[tp.topic] += max(0, ends[tp] - done)
        return lag

    async def end_offsets(self, topics: list[str]) -> dict[str, int]:
        """The log-end offsets of ``topics``, summed over their partitions: messages produced so far."""
        tps = await self.partitions(topics)
        ends = await self.consumer.end_offsets(tps) if tps else {}
        out = {t: 0 for t in topics}
        for tp, off in ends.items():
            out[tp.topic] += off
        return out

    async def changelog_topics(self) -> list[str]:
        """The app's table changelog topics."""
        topics = await self.admin.list_topics()
        return sorted(t for t in topics if t.startswith(self.settings.app_id + "-") and t.endswith("-changelog"))

    async def wait_zero(
        self, *, timeout: float = 300.0, settle: float = 2.0, interval: float = 0.5,
        check: Callable[[], None] | None = None, progress: Callable[[int], None] | None = None,
    ) -> CaughtUp:
        """Poll every ``interval`` s until every topic has had zero lag for ``settle`` s.

        Deliveries are produced by the first stage while it works, so zero lag must
        hold over polls ``settle`` seconds apart. ``check`` runs before each poll (e.g.
        raise if the worker died); ``progress`` gets the total lag of every poll.
        Raises TimeoutError.
        """
        began = time.time()
        first_zero: float | None = None
        peak = 0
        samples: list[tuple[float, int]] = []
        last: dict[str, int] = {}
        while time.time() - began < timeout:
            if check is not None:
                check()
            try:
                last = await self.lag()
            except KafkaError as exc:  # e.g. the group coordinator is still loading
                last = {"error": repr(exc)}  # type: ignore[dict-item]
                await asyncio.sleep(interval)
                continue
            total = sum(last.values())
            now = time.time()
            samples.append((round(now - began, 2), total))
            peak = max(peak, total)
            if progress is not None:
                progress(total)
            if total == 0:
                if first_zero is None:
                    first_zero = now
                elif now - first_zero >= settle:
                    return CaughtUp(began, first_zero, now, peak, samples)
            else:
                first_zero = None
            await asyncio.sleep(interval)
        raise TimeoutError(f"pipeline still behind after {timeout:.0f}s: lag {last}")


async def consumer_lag(settings: Settings, topics: Iterable[str] | None = None) -> dict[str, int]:
    """Messages not yet committed by the app's consumer group, per topic."""
    async with LagMonitor(settings, topics) as monitor:
        return await monitor.lag()


async def wait_caught_up(
    settings: Settings, *, timeout: float = 300.0, settle: float = 2.0,
    check: Callable[[], None] | None = None, progress: Callable[[int], None] | None = None,
) -> float:
    """Wait until the group has no lag on every pipeline topic for ``settle`` seconds
    (``LagMonitor.wait_zero``). Returns the seconds waited; raises TimeoutError."""
    async with LagMonitor(settings) as monitor:
        done = await monitor.wait_zero(timeout=timeout, settle=settle, check=check, progress=progress)
    return done.waited_s
