"""The dead-letter topic: where events that break the contract go, with the reason.

A poison message never stalls a partition: it is published here (durably, before
its offset is committed), counted, and the stream moves on.
"""
from __future__ import annotations

import base64
import logging
import time
from typing import Any

import orjson
from prometheus_client import Counter

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter(
    "timeline_dead_letters_total", "Events sent to the dead-letter topic", ["topic", "stage"]
)


def dead_letter_record(event: Any, reason: str, stage: str) -> bytes:
    """The JSON value published to the dead-letter topic for one bad message."""
    msg = event.message
    value = msg.value if isinstance(msg.value, (bytes, type(None))) else bytes(msg.value)
    key = msg.key if isinstance(msg.key, (bytes, type(None))) else bytes(msg.key)
    return orjson.dumps(
        {
            "reason": reason,
            "stage": stage,
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "key": key.decode("utf-8", "replace") if key is not None else None,
            "value": value.decode("utf-8", "replace") if value is not None else None,
            "value_b64": base64.b64encode(value).decode() if value is not None else None,
            "at": int(time.time() * 1000),
        }
    )


def count_dead_letter(event: Any, reason: str, stage: str) -> None:
    DEAD_LETTERS.labels(topic=event.message.topic, stage=stage).inc()
    log.warning(
        "dead letter from %s[%d]@%d: %s",
        event.message.topic, event.message.partition, event.message.offset, reason,
    )
