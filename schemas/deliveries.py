"""The contract of ``timeline-deliveries``, stage 1's messages to stage 2.

A delivery message is ``{"ops": [op, ...]}`` (typed here as :data:`DeliveryOp`),
published to the partition of its recipients (``policies/partitioning.py``). The topic is internal, but anything that
can write to Kafka can write to it, so stage 2 checks every op as strictly as an
event from a source topic: a message that breaks this contract is dead-lettered
whole, before any of its ops touches a table or a store.

Ops (all fields required; ids are 1..2^63-1, times epoch ms as in ``schemas.events``):

* ``add``: ``tweet_id``, ``author_id``, ``created_at``, ``to`` (recipients);
* ``remove``: ``tweet_id``, ``author_id``, ``to``;
* ``follow`` / ``unfollow``: ``follower``, ``followee``, ``at``;
* ``backfill``: ``author``, ``above`` (a tweet id, or 0), ``to``.

Every recipient (``to`` and ``follower``) must belong to the message's partition.
:func:`encode_messages` splits a partition's ops into messages of at most
``max_bytes`` each (splitting one op's recipients when it alone is larger), so no
batch can exceed the producer's or the broker's size limit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence, Union

import orjson

from schemas.events import ContractError, check_id, check_time

MAX_RECIPIENTS_PER_OP = 100_000


@dataclass(frozen=True, slots=True)
class Add:
    """Put a tweet in the timelines of ``to`` (a push)."""

    OP: ClassVar[str] = "add"
    tweet_id: int
    author_id: int
    created_at: int
    to: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Remove:
    """Take a deleted tweet out of the timelines of ``to``."""

    OP: ClassVar[str] = "remove"
    tweet_id: int
    author_id: int
    to: tuple[int, ...]
    created_at: int = 0  # on the wire for the older readers' sake; not read


@dataclass(frozen=True, slots=True)
class Follow:
    """``follower`` follows ``followee`` now: their following list, and a backfill."""

    OP: ClassVar[str] = "follow"
    follower: int
    followee: int
    at: int


@dataclass(frozen=True, slots=True)
class Unfollow:
    """``follower`` stopped following ``followee``: their following list, and a removal."""

    OP: ClassVar[str] = "unfollow"
    follower: int
    followee: int
    at: int


@dataclass(frozen=True, slots=True)
class Backfill:
    """``author`` left celebrity status: add to ``to`` what they posted after ``above``."""

    OP: ClassVar[str] = "backfill"
    author: int
    above: int
    to: tuple[int, ...]


DeliveryOp = Union[Add, Remove, Follow, Unfollow, Backfill]
OP_TYPES: dict[str, type] = {c.OP: c for c in (Add, Remove, Follow, Unfollow, Backfill)}


def op_to_dict(op: DeliveryOp) -> dict[str, Any]:
    """The wire form of one op: ``{"op": name, **fields}``, recipients as a list."""
    out: dict[str, Any] = {"op": op.OP}
    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out

_ID = "id"
_TIME = "time"
_ABOVE = "above"
_TO = "to"
OP_FIELDS: dict[str, dict[str, str]] = {
    "add": {"tweet_id": _ID, "author_id": _ID, "created_at": _TIME, "to": _TO},
    "remove": {"tweet_id": _ID, "author_id": _ID, "to": _TO},
    "follow": {"follower": _ID, "followee": _ID, "at": _TIME},
    "unfollow": {"follower": _ID, "followee": _ID, "at": _TIME},
    "backfill": {"author": _ID, "above": _ABOVE, "to": _TO},
}


def _check_op(i: int, op: Any, owns: Callable[[int], bool]) -> DeliveryOp:
    if not isinstance(op, dict):
        raise ContractError(f"op {i} must be an object")
    kind = op.get("op")
    spec = OP_FIELDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise ContractError(f"op {i} has no known 'op' name (one of {sorted(OP_FIELDS)})")
    for name, rule in spec.items():
        if name not in op:
            raise ContractError(f"op {i} ({kind}) is missing field {name!r}")
        value = op[name]
        if rule == _ID:
            check_id(name, value)
        elif rule == _TIME:
            check_time(name, value)
        elif rule == _ABOVE:
            if value != 0:
                check_id(name, value)
        else:
            if not isinstance(value, list) or not 0 < len(value) <= MAX_RECIPIENTS_PER_OP:
                raise ContractError(f"op {i} ({kind}): 'to' must be a list of 1..{MAX_RECIPIENTS_PER_OP} ids")
            for user_id in value:
                check_id("to", user_id)
                if not owns(user_id):
                    raise ContractError(f"op {i} ({kind}): recipient {user_id} is not on this partition")
    if kind in ("follow", "unfollow"):
        if op["follower"] == op["followee"]:
            raise ContractError(f"op {i} ({kind}): follower == followee")
        if not owns(op["follower"]):
            raise ContractError(f"op {i} ({kind}): follower {op['follower']} is not on this partition")
    cls = OP_TYPES[kind]
    return cls(**{name: tuple(op[name]) if name == "to" else op[name] for name in spec})


def decode_ops(raw: bytes | None, owns: Callable[[int], bool], max_bytes: int) -> list[DeliveryOp]:
    """The ops of one delivery message, checked; ``owns(user)`` says whether a recipient belongs
    to the message's partition. Raises ContractError."""
    if raw is None:
        raise ContractError("delivery has no value (tombstone)")
    if len(raw) > max_bytes:
        raise ContractError(f"delivery is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"delivery is not valid UTF-8 JSON: {exc}") from None
    ops = body.get("ops") if isinstance(body, dict) else None
    if not isinstance(ops, list) or not ops:
        raise ContractError('delivery must be {"ops": [...]} with at least one op')
    checked = [_check_op(i, op, owns) for i, op in enumerate(ops)]
    _check_no_duplicate_members(raw, ops)
    return checked


def _check_no_duplicate_members(raw: bytes, ops: list[dict]) -> None:
    """A member given twice in one object is ambiguous (parsers keep the first or the last).

    Stage 1's messages hold no strings but op names, so every quoted field name in the raw
    bytes is a member name: each must occur exactly as often as the parsed objects have it.
    Cheap (a byte count per name) even for the largest message.
    """
    if raw.count(b'"ops"') != 1:
        raise ContractError("member 'ops' appears more than once (ambiguous)")
    counts: dict[str, int] = {}
    for op in ops:
        for name in op:
            counts[name] = counts.get(name, 0) + 1
    for name, n in counts.items():
        if raw.count(b'"%s"' % name.encode("utf-8", "surrogatepass")) != n:
            raise ContractError(f"member {name!r} appears more than once in an op, or as a string value (ambiguous)")


_HEAD = b'{"ops":['
_TAIL = b"]}"


def _split_op(op: dict, max_bytes: int) -> Iterator[bytes]:
    """An op (wire form) whose encoding is over ``max_bytes``, as several ops over parts of its ``to``."""
    recipients = op["to"]
    base = len(orjson.dumps({**op, "to": []})) + len(_HEAD) + len(_TAIL)
    room = max_bytes - base
    part: list[int] = []
    size = 0
    for user_id in recipients:
        width = len(str(user_id)) + 1
        if part and size + width > room:
            yield orjson.dumps({**op, "to": part})
            part, size = [], 0
        part.append(user_id)
        size += width
    if part:
        yield orjson.dumps({**op, "to": part})


def encode_messages(ops: Sequence[DeliveryOp], max_bytes: int) -> list[bytes]:
    """The ops of one partition as delivery messages of at most ``max_bytes`` each, in order."""
    if max_bytes < 1024:
        raise ValueError("max_bytes must be >= 1024")
    messages: list[bytes] = []
    parts: list[bytes] = []
    size = len(_HEAD) + len(_TAIL)
    for typed in ops:
        op = op_to_dict(typed)
        encoded = orjson.dumps(op)
        pieces = [encoded]
        if len(encoded) + len(_HEAD) + len(_TAIL) > max_bytes:
            if not isinstance(op.get("to"), list):
                raise ValueError(f"op {op.get('op')!r} is larger than {max_bytes} bytes and has no recipients to split")
            pieces = list(_split_op(op, max_bytes))
        for piece in pieces:
            extra = len(piece) + (1 if parts else 0)
            if parts and size + extra > max_bytes:
                messages.append(_HEAD + b",".join(parts) + _TAIL)
                parts, size = [], len(_HEAD) + len(_TAIL)
                extra = len(piece)
            parts.append(piece)
            size += extra
    if parts:
        messages.append(_HEAD + b",".join(parts) + _TAIL)
    return messages
