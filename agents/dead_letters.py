"""The dead-letter topic: where events that break the contract go, with the reason.

A poison message never stalls a partition: it is published here (durably, before
its offset is committed), counted, and the stream moves on.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import Any

import orjson
from prometheus_client import Counter

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter(
    "timeline_dead_letters_total", "Events sent to the dead-letter topic", ["topic", "stage"]
)


# A dead-letter record is bounded whatever the input (a few KiB at most), so it can always
# be published: the bad message itself stays on its topic at topic/partition/offset.
VALUE_HEAD_BYTES = 512
KEY_HEAD_BYTES = 128
REASON_CHARS = 1000


def _as_bytes(raw: Any) -> bytes | None:
    if raw is None or isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return bytes(raw)


def dead_letter_record(event: Any, reason: str, stage: str) -> bytes:
    """The JSON value published to the dead-letter topic for one bad message: where it is on
    the log, why it was refused, and a bounded view of it (under 8 KiB whatever the input: JSON escapes a control byte in 6)."""
    msg = event.message
    value = _as_bytes(msg.value)
    key = _as_bytes(msg.key)
    head = value[:VALUE_HEAD_BYTES] if value is not None else None
    if len(reason) > REASON_CHARS:
        reason = reason[: REASON_CHARS - 3] + "..."
    return orjson.dumps(
        {
            "reason": reason,
            "stage": stage,
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "key": key[:KEY_HEAD_BYTES].decode("utf-8", "replace") if key is not None else None,
            "key_len": len(key) if key is not None else None,
            "value_len": len(value) if value is not None else None,
            "value_sha256": hashlib.sha256(value).hexdigest() if value is not None else None,
            "value_head": head.decode("utf-8", "replace") if head is not None else None,
            "value_head_b64": base64.b64encode(head).decode() if head is not None else None,
            "value_truncated": value is not None and len(value) > VALUE_HEAD_BYTES,
            "at": int(time.time() * 1000),
        }
    )


def count_dead_letter(event: Any, reason: str, stage: str) -> None:
    DEAD_LETTERS.labels(topic=event.message.topic, stage=stage).inc()
    log.warning(
        "dead letter from %s[%d]@%d: %s",
        event.message.topic, event.message.partition, event.message.offset, reason,
    )
