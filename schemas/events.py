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

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Union

import orjson

from policies.text import TextRuleError, validate_tweet_text

SCHEMA_VERSION = 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Times are epoch milliseconds from 1970-01-01 to 9999-12-31T23:59:59.999Z: the range every
# store and the projection's timestamps hold (PostgreSQL timestamptz and Python's datetime end
# in year 9999; Cassandra's timestamp is a signed 64-bit millisecond count).
MIN_TIME_MS = 0
MAX_TIME_MS = 253_402_300_799_999


@dataclass(frozen=True, slots=True)
class Limits:
    """The contract's size limits. Their values are settings (``settings.py``): build them with
    :meth:`from_settings`; ``DEFAULT_LIMITS`` are the settings' defaults."""

    max_text_chars: int = 280
    max_event_bytes: int = 64 * 1024
    # How deep a producer's extra (ignored) fields may nest objects and arrays.
    max_depth: int = 8

    @classmethod
    def from_settings(cls, settings: Any) -> "Limits":
        return cls(
            max_text_chars=settings.tweet_max_chars,
            max_event_bytes=settings.event_max_bytes,
            max_depth=settings.event_max_depth,
        )


class ContractError(ValueError):
    """An event that does not match the contract; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TweetPosted:
    TYPE: ClassVar[str] = "tweet_posted"
    TOPIC: ClassVar[str] = "topic_tweets"
    KEY: ClassVar[str] = "author_id"
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
    TOPIC: ClassVar[str] = "topic_tweets"
    KEY: ClassVar[str] = "author_id"
    tweet_id: int
    author_id: int
    deleted_at: int

    @property
    def key(self) -> int:
        return self.author_id


@dataclass(frozen=True, slots=True)
class UserFollowed:
    TYPE: ClassVar[str] = "followed"
    TOPIC: ClassVar[str] = "topic_follows"
    KEY: ClassVar[str] = "followee_id"
    follower_id: int
    followee_id: int
    at: int

    @property
    def key(self) -> int:
        return self.followee_id


@dataclass(frozen=True, slots=True)
class UserUnfollowed:
    TYPE: ClassVar[str] = "unfollowed"
    TOPIC: ClassVar[str] = "topic_follows"
    KEY: ClassVar[str] = "followee_id"
    follower_id: int
    followee_id: int
    at: int

    @property
    def key(self) -> int:
        return self.followee_id


@dataclass(frozen=True, slots=True)
class UserActive:
    TYPE: ClassVar[str] = "user_active"
    TOPIC: ClassVar[str] = "topic_activity"
    KEY: ClassVar[str] = "user_id"
    user_id: int
    at: int

    @property
    def key(self) -> int:
        return self.user_id


TweetEvent = Union[TweetPosted, TweetDeleted]
FollowEvent = Union[UserFollowed, UserUnfollowed]
Event = Union[TweetPosted, TweetDeleted, UserFollowed, UserUnfollowed, UserActive]

# The registry: every event type, in the order of their topics. Each class declares its
# ``TYPE`` (the JSON ``type``), its ``TOPIC`` (the name of the Settings field that names
# its topic) and its ``KEY`` (the id field that keys it, and so picks its partition).
# Adding an event type is one class here and the agent code that acts on it.
REGISTRY: tuple[type, ...] = (TweetPosted, TweetDeleted, UserFollowed, UserUnfollowed, UserActive)
ALL_EVENTS: dict[str, type] = {c.TYPE: c for c in REGISTRY}
TWEET_EVENTS: dict[str, type] = {c.TYPE: c for c in REGISTRY if c.TOPIC == "topic_tweets"}
FOLLOW_EVENTS: dict[str, type] = {c.TYPE: c for c in REGISTRY if c.TOPIC == "topic_follows"}
ACTIVITY_EVENTS: dict[str, type] = {c.TYPE: c for c in REGISTRY if c.TOPIC == "topic_activity"}


def topic_of(event: Any, settings: Any) -> str:
    """The topic of an event, an event class or a ``type`` name, in ``settings``' namespace."""
    cls = ALL_EVENTS[event] if isinstance(event, str) else (event if isinstance(event, type) else type(event))
    return getattr(settings, cls.TOPIC)


def source_topics(settings: Any) -> list[str]:
    """The topics producers write to, in registry order, each once."""
    return list(dict.fromkeys(getattr(settings, c.TOPIC) for c in REGISTRY))


def events_on(settings: Any) -> dict[str, dict[str, type]]:
    """Topic -> the event types it carries (``type`` name -> class); anything else on it breaks the contract."""
    out: dict[str, dict[str, type]] = {}
    for c in REGISTRY:
        out.setdefault(getattr(settings, c.TOPIC), {})[c.TYPE] = c
    return out


def key_of(data: dict[str, Any]) -> int:
    """The key id of an event given as a JSON-like dict (its class's ``KEY`` field)."""
    return data[ALL_EVENTS[data["type"]].KEY]

# Each event class's contract fields, in order.
_FIELDS: dict[type, tuple[str, ...]] = {c: tuple(f.name for f in fields(c)) for c in ALL_EVENTS.values()}
# Field name -> the rule it must satisfy.
_ID_FIELDS = {"tweet_id", "author_id", "follower_id", "followee_id", "user_id"}
_TIME_FIELDS = {"created_at", "deleted_at", "at"}


def check_id(name: str, value: Any) -> int:
    """An id: a JSON integer in 1..2^63-1 (bool, float, string and null are not ids)."""
    # bool is an int subclass in Python; true/false are not ids.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"field {name!r} must be an integer, got {_json_type(value)}")
    if not 0 < value <= INT64_MAX:
        raise ContractError(f"field {name!r} must be an id in 1..{INT64_MAX}, got {_short(value)}")
    return value


def check_time(name: str, value: Any) -> int:
    """A time: integer epoch milliseconds in MIN_TIME_MS..MAX_TIME_MS (1970 to year 9999)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"field {name!r} must be an integer (epoch ms), got {_json_type(value)}")
    if not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise ContractError(
            f"field {name!r} must be epoch milliseconds in {MIN_TIME_MS}..{MAX_TIME_MS} "
            f"(1970 to year 9999), got {_short(value)}"
        )
    return value


def _check_int(name: str, value: Any) -> int:
    return check_id(name, value) if name in _ID_FIELDS else check_time(name, value)


def _check_text(value: Any, limits: Limits) -> str:
    # The Post service's rule (policies/text.py), so that every producer meets the same one:
    # no NUL or other control characters but \n, no lone surrogates, 1..max code points after NFC.
    try:
        return validate_tweet_text(value, limits.max_text_chars)
    except TextRuleError as exc:
        raise ContractError(f"field 'text' breaks rule {exc.rule}: {exc.detail}") from None


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number with a fraction or exponent", str: "string",
            list: "array", dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_depth(value: Any, max_depth: int) -> None:
    """Extra fields may carry metadata, but no deeper than ``max_depth`` levels of nesting."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise ContractError(f"an extra field nests deeper than {max_depth} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for name, value in pairs:
        if name in seen:
            raise ContractError(f"member {name!r} appears more than once in one object (ambiguous)")
        seen[name] = value
    return seen


def _check_no_duplicate_members(raw: bytes | str, names: tuple[str, ...]) -> None:
    """A contract field given twice is ambiguous (parsers keep the first or the last): refused.

    The exact check (a second parse) runs only when one of ``names`` appears twice in the raw
    text, which a well-formed event never does unless its text quotes a field name.
    """
    data = raw.encode() if isinstance(raw, str) else raw
    if any(data.count(b'"%s"' % n.encode()) > 1 for n in names):
        try:
            json.loads(data, object_pairs_hook=_reject_duplicates)
        except ContractError:
            raise
        except ValueError:  # orjson accepted it; a difference of parsers is not our business here
            pass


def from_dict(data: Any, allowed: dict[str, type] = ALL_EVENTS, limits: Limits | None = None) -> Event:
    """Build a typed event from a decoded JSON object, or raise ContractError."""
    limits = limits or DEFAULT_LIMITS
    if not isinstance(data, dict):
        raise ContractError(f"event must be a JSON object, got {_json_type(data)}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ContractError("event has no string field 'type'")
    cls = allowed.get(kind)
    if cls is None:
        raise ContractError(f"event type {_short(kind)} is not one of {sorted(allowed)} on this topic")
    values: dict[str, Any] = {}
    for name in _FIELDS[cls]:
        if name not in data:
            raise ContractError(f"{kind} event is missing field {name!r}")
        raw = data[name]
        values[name] = _check_text(raw, limits) if name == "text" else _check_int(name, raw)
    if len(data) > len(values) + 1:
        extras = [v for k, v in data.items() if k != "type" and k not in values]
        _check_depth(extras, limits.max_depth)
    event = cls(**values)
    if isinstance(event, (UserFollowed, UserUnfollowed)) and event.follower_id == event.followee_id:
        raise ContractError(f"{kind} event has follower_id == followee_id ({event.follower_id})")
    return event


def decode(raw: bytes | str | None, allowed: dict[str, type] = ALL_EVENTS, limits: Limits | None = None) -> Event:
    """Decode one message value from the log, or raise ContractError."""
    limits = limits or DEFAULT_LIMITS
    if raw is None:
        raise ContractError("message has no value (tombstone)")
    if len(raw) > limits.max_event_bytes:
        raise ContractError(f"event is {len(raw)} bytes, the limit is {limits.max_event_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"value is not valid UTF-8 JSON: {exc}") from None
    event = from_dict(data, allowed, limits)
    _check_no_duplicate_members(raw, ("type", *_FIELDS[type(event)]))
    return event


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


def _default_limits() -> Limits:
    from settings import Settings  # the defaults of the one place limits are set

    return Limits.from_settings(Settings())


DEFAULT_LIMITS = _default_limits()
