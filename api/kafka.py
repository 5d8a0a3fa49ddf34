"""A service's one Kafka producer, with bounded waits and a clear failure mode.

Every write the Post service accepts is first an event on the log (the query service
produces only ``user_active`` events, in the background). :meth:`KafkaGateway.produce`
returns only once the broker acknowledged the record (``acks='all'``, idempotent
producer), or raises :class:`KafkaUnavailable` within ``timeout_s``:

* ``maybe_written=False``: the record was never handed to the producer (no connection,
  no metadata for the topic, ``send()`` cancelled before it queued the record). Cancelling
  the ``send()`` coroutine stops the record from being sent, so nothing reached the log.
* ``maybe_written=True``: the record was queued but not acknowledged in time; it may still
  reach the log. Callers keep enough state (the tweet id, via the Idempotency-Key
  record) for a retry to produce the *same* event again, which consumers treat as a
  duplicate.

When the broker refuses a record or the producer gives up on one (a ``KafkaError`` after
the hand-over: ``MessageSizeTooLarge``, an expired batch, ``OutOfOrderSequenceNumber``...),
the producer is replaced by a new one (a new producer id): the idempotent producer's
sequence numbers for that partition no longer match the broker's, and every later record
there would fail with ``OutOfOrderSequenceNumber`` until the process restarts.

If the producer cannot be started (broker down at boot) the service still runs; each
request retries the start, at most once per ``retry_after_s``, failing fast in between.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from api.errors import describe
from schemas.events import Event, encode, encode_key
from settings import Settings

log = logging.getLogger(__name__)


class KafkaUnavailable(RuntimeError):
    def __init__(self, reason: str, *, maybe_written: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_written = maybe_written


class KafkaGateway:
    def __init__(self, settings: Settings, *, timeout_s: float = 5.0, retry_after_s: float = 1.0) -> None:
        self._settings = settings
        self.timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._last_failure_at = float("-inf")
        self._retiring: set[asyncio.Task[None]] = set()
        self.last_error: str | None = None

    def _new_producer(self) -> AIOKafkaProducer:
        timeout_ms = max(1000, int(self.timeout_s * 1000))
        return AIOKafkaProducer(
            **self._settings.kafka_kwargs(),
            client_id="post-service",
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=timeout_ms,
            # Small linger: concurrent requests share produce requests.
            linger_ms=1,
            retry_backoff_ms=100,
            connections_max_idle_ms=540_000,
        )

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Start the producer now if possible; failures are retried on demand."""
        try:
            await self._ensure(time.monotonic() + self.timeout_s, force=True)
        except KafkaUnavailable as exc:
            log.warning("Kafka producer not started: %s", exc.reason)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), self.timeout_s)
            except Exception as exc:
                log.warning("Kafka producer did not stop cleanly: %s", exc)
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=self.timeout_s)

    def _retire(self, producer: AIOKafkaProducer) -> None:
        """Stop using ``producer`` (the next request starts a new one) and stop it in the
        background: its other queued records fail or complete meanwhile."""
        if self._producer is not producer:
            return
        self._producer = None

        async def stop() -> None:
            try:
                await asyncio.wait_for(producer.stop(), self.timeout_s)
            except (Exception, asyncio.TimeoutError) as exc:
                log.warning("retired Kafka producer did not stop cleanly: %s", describe(exc))

        task = asyncio.get_running_loop().create_task(stop())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _ensure(self, deadline: float, *, force: bool = False) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            now = time.monotonic()
            if not force and now - self._last_failure_at < self._retry_after_s:
                raise KafkaUnavailable(
                    f"Kafka at {self._settings.kafka_bootstrap} is unreachable ({self.last_error})",
                    maybe_written=False,
                )
            producer = self._new_producer()
            try:
                await asyncio.wait_for(producer.start(), max(0.01, deadline - now))
            except (Exception, asyncio.TimeoutError) as exc:
                self._last_failure_at = time.monotonic()
                self.last_error = describe(exc)
                try:
                    await asyncio.wait_for(producer.stop(), 2.0)
                except Exception:
                    pass
                raise KafkaUnavailable(
                    f"Kafka at {self._settings.kafka_bootstrap} is unreachable ({self.last_error})",
                    maybe_written=False,
                ) from None
            self._producer = producer
            self.last_error = None
            return producer

    async def produce(self, topic: str, event: Event) -> Any:
        """Append ``event`` to ``topic`` keyed by ``event.key``; return the RecordMetadata."""
        deadline = time.monotonic() + self.timeout_s
        producer = await self._ensure(deadline)
        key, value = encode_key(event.key), encode(event)
        # asyncio.timeout, not wait_for: no task of its own per call (two per request here).
        try:
            async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                fut = await producer.send(topic, value=value, key=key)
        except (KafkaError, asyncio.TimeoutError) as exc:
            self.last_error = describe(exc)
            raise KafkaUnavailable(
                f"Kafka did not accept the {event.TYPE} event for topic {topic!r} "
                f"({self.last_error})",
                maybe_written=False,
            ) from None
        try:
            async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                return await fut
        except (KafkaError, asyncio.TimeoutError) as exc:
            self.last_error = describe(exc)
            if isinstance(exc, KafkaError):
                log.warning("Kafka refused or gave up on a %s record (%s): starting a new producer",
                            event.TYPE, self.last_error)
                self._retire(producer)
            raise KafkaUnavailable(
                f"Kafka did not acknowledge the {event.TYPE} event on topic {topic!r} within "
                f"{self.timeout_s:g} s ({self.last_error})",
                maybe_written=True,
            ) from None

    async def state(self) -> dict[str, Any]:
        producer = self._producer
        if producer is None:
            try:
                producer = await self._ensure(time.monotonic() + min(self.timeout_s, 2.0))
            except KafkaUnavailable as exc:
                return {"ok": False, "error": exc.reason}
        try:
            metadata = await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)
        except (Exception, asyncio.TimeoutError) as exc:
            return {"ok": False, "error": describe(exc)}
        return {"ok": True, "brokers": len(metadata.brokers())}
