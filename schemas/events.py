"""The event contract of the Kafka log: typed, immutable, past-tense events.

Topics and keys (names are settings):

* ``tweets``, keyed by the author id: ``tweet_posted`` and ``tweet_deleted``.
* ``follows``, keyed by the followee id: ``followed`` and ``unfollowed``.
* ``user-activity``, keyed by the user id: ``user_active``.

Every event is one JSON object with a ``type``. Extra fields are allowed and
ignored (``event_id``, ``v``, ...), so producers can add metadata without
breaking consumers. Keys are the decimal id as UTF-8 bytes (``b"42"``).

Events are decoded here, not by Faust's record machinery, so that an event that
breaks the contract raises :class:`ContractError` with a reason a person can act
on, and the agent sends it to the dead-letter topic instead of crashing.
"""
from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Union

import orjson

SCHEMA_VERSION = 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_EVENT_BYTES = 64 * 1024
MAX_TEXT_CHARS = 280


class ContractError(ValueError):
    """An event that does not match the contract; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TweetPosted:
    TYPE: ClassVar[str] = "tweet_posted"
    tweet_id: int
    author_id: int
    text: str
    created_at: int  # epoch ms

    @property
    def key(self) -> int:
        return self.author_id


@dataclass(frozen=True, slots=True)
class TweetDeleted:
    TYPE: ClassVar[str] = "tweet_deleted"
    tweet_id: int
    author_id: int
    deleted_at: int

    @property
    def key(self) -> int:
        return self.author_id


@dataclass(frozen=True, slots=True)
class UserFollowed:
    TYPE: ClassVar[str] = "followed"
    follower_id: int
    followee_id: int
    at: int

    @property
    def key(self) -> int:
        return self.followee_id


@dataclass(frozen=True, slots=True)
class UserUnfollowed:
    TYPE: ClassVar[str] = "unfollowed"
    follower_id: int
    followee_id: int
    at: int

    @property
    def key(self) -> int:
        return self.followee_id


@dataclass(frozen=True, slots=True)
class UserActive:
    TYPE: ClassVar[str] = "user_active"
    user_id: int
    at: int

    @property
    def key(self) -> int:
        return self.user_id


TweetEvent = Union[TweetPosted, TweetDeleted]
FollowEvent = Union[UserFollowed, UserUnfollowed]
Event = Union[TweetPosted, TweetDeleted, UserFollowed, UserUnfollowed, UserActive]

TWEET_EVENTS: dict[str, type] = {c.TYPE: c for c in (TweetPosted, TweetDeleted)}
FOLLOW_EVENTS: dict[str, type] = {c.TYPE: c for c in (UserFollowed, UserUnfollowed)}
ACTIVITY_EVENTS: dict[str, type] = {UserActive.TYPE: UserActive}
ALL_EVENTS: dict[str, type] = {**TWEET_EVENTS, **FOLLOW_EVENTS, **ACTIVITY_EVENTS}

# Field name -> the rule it must satisfy.
_ID_FIELDS = {"tweet_id", "author_id", "follower_id", "followee_id", "user_id"}
_TIME_FIELDS = {"created_at", "deleted_at", "at"}


def _check_int(name: str, value: Any) -> int:
    # bool is an int subclass in Python; true/false are not ids.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"field {name!r} must be an integer, got {type(value).__name__}")
    if name in _ID_FIELDS and not 0 < value <= INT64_MAX:
        raise ContractError(f"field {name!r} must be a positive 64-bit integer, got {value}")
    if name in _TIME_FIELDS and not 0 <= value <= INT64_MAX:
        raise ContractError(f"field {name!r} must be epoch milliseconds >= 0, got {value}")
    return value


def _check_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ContractError(f"field 'text' must be a string, got {type(value).__name__}")
    text = unicodedata.normalize("NFC", value)
    if len(text) > MAX_TEXT_CHARS:
        raise ContractError(f"field 'text' has {len(text)} code points, the limit is {MAX_TEXT_CHARS}")
    if not text.strip():
        raise ContractError("field 'text' is empty or whitespace only")
    return text


def from_dict(data: Any, allowed: dict[str, type] = ALL_EVENTS) -> Event:
    """Build a typed event from a decoded JSON object, or raise ContractError."""
    if not isinstance(data, dict):
        raise ContractError(f"event must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ContractError("event has no string field 'type'")
    cls = allowed.get(kind)
    if cls is None:
        raise ContractError(f"event type {kind!r} is not one of {sorted(allowed)} on this topic")
    values: dict[str, Any] = {}
    for name in (f.name for f in fields(cls)):
        if name not in data:
            raise ContractError(f"{kind} event is missing field {name!r}")
        raw = data[name]
        values[name] = _check_text(raw) if name == "text" else _check_int(name, raw)
    event = cls(**values)
    if isinstance(event, (UserFollowed, UserUnfollowed)) and event.follower_id == event.followee_id:
        raise ContractError(f"{kind} event has follower_id == followee_id ({event.follower_id})")
    return event


def decode(raw: bytes | str | None, allowed: dict[str, type] = ALL_EVENTS) -> Event:
    """Decode one message value from the log, or raise ContractError."""
    if raw is None:
        raise ContractError("message has no value (tombstone)")
    if len(raw) > MAX_EVENT_BYTES:
        raise ContractError(f"event is {len(raw)} bytes, the limit is {MAX_EVENT_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"value is not valid UTF-8 JSON: {exc}") from None
    return from_dict(data, allowed)


def to_dict(event: Event) -> dict[str, Any]:
    return {"type": event.TYPE, **asdict(event), "v": SCHEMA_VERSION}


def encode(event: Event) -> bytes:
    return orjson.dumps(to_dict(event))


def encode_key(entity_id: int) -> bytes:
    """Message key: the decimal id, so that producers in any language agree."""
    return str(entity_id).encode()


def decode_key(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None
