"""timeline-deliveries: strict decode, and messages split by bytes so none exceeds the producer's limit."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from schemas import ContractError
from schemas.deliveries import OP_TYPES, decode_ops, encode_messages, op_to_dict

EVEN = lambda user_id: user_id % 2 == 0  # noqa: E731 - "this partition owns even users"


def add(tweet_id: int, to: list[int]) -> dict:
    return {"op": "add", "tweet_id": tweet_id, "author_id": 7, "created_at": 1_700_000_000_000, "to": to}


def msg(*ops: dict) -> bytes:
    return orjson.dumps({"ops": list(ops)})


def typed(op: dict):
    """The typed form of a wire op (what decode_ops returns)."""
    cls = OP_TYPES[op["op"]]
    return cls(**{k: tuple(v) if k == "to" else v for k, v in op.items() if k != "op"})


def wire(messages: list[bytes], limit: int) -> list[dict]:
    return [op_to_dict(op) for m in messages for op in decode_ops(m, EVEN, limit)]


def test_valid_ops_decode():
    ops = [add(1, [2, 4]), {"op": "remove", "tweet_id": 1, "author_id": 7, "created_at": 0, "to": [2]},
           {"op": "follow", "follower": 2, "followee": 9, "at": 5}, {"op": "unfollow", "follower": 4, "followee": 9, "at": 6},
           {"op": "backfill", "author": 9, "above": 0, "to": [6]}]
    assert decode_ops(msg(*ops), EVEN, 1 << 20) == [typed(op) for op in ops]
    assert [op_to_dict(op) for op in decode_ops(msg(*ops), EVEN, 1 << 20)] == ops


@pytest.mark.parametrize("value, reason", [
    (None, "tombstone"), (b"nope", "not valid UTF-8 JSON"), (b"[]", '{"ops": [...]}'), (b'{"ops": []}', "at least one"),
    (msg({"op": "explode"}), "no known 'op'"), (msg([1]), "must be an object"),
    (msg(add(1, [])), "'to' must be a list"), (msg(add(1, [3])), "recipient 3 is not on this partition"),
    (msg(add("1", [2])), "'tweet_id' must be an integer"), (msg(add(2**63, [2])), "must be an id"),
    (msg({**add(1, [2]), "created_at": 253402300800000}), "'created_at' must be epoch"),
    (msg({"op": "follow", "follower": 3, "followee": 9, "at": 5}), "follower 3 is not on this partition"),
    (msg({"op": "follow", "follower": 2, "followee": 2, "at": 5}), "follower == followee"),
    (msg({"op": "backfill", "author": 9, "above": -1, "to": [2]}), "'above'"),
    (msg({"op": "add", "tweet_id": 1, "author_id": 7, "created_at": 1}), "missing field 'to'"),
])
def test_bad_messages_are_refused_whole(value, reason):
    with pytest.raises(ContractError, match=None) as info:
        decode_ops(value, EVEN, 1 << 20)
    assert reason in info.value.reason


def test_size_limit():
    with pytest.raises(ContractError, match="the limit is 1024"):
        decode_ops(msg(add(1, list(range(2, 2000, 2)))), EVEN, 1024)


def test_a_batch_too_large_for_one_message_is_split_in_order():
    # 500 tweets by 10,000-follower authors over 64 partitions: ~156 recipients per op here.
    recipients = [10**17 + 2 * i for i in range(156)]
    ops = [add(10**18 + i, recipients) for i in range(500)]
    messages = encode_messages([typed(op) for op in ops], 256 * 1024)
    assert len(messages) > 1 and all(len(m) <= 256 * 1024 for m in messages)
    assert wire(messages, 256 * 1024) == ops


def test_one_op_larger_than_the_limit_is_split_by_recipients():
    recipients = list(range(2, 200_002, 2))  # 100,000 recipients, ~700 KB as one op
    messages = encode_messages([typed(add(1, recipients)), typed(add(2, [4]))], 64 * 1024)
    assert all(len(m) <= 64 * 1024 for m in messages)
    decoded = wire(messages, 64 * 1024)
    assert [r for op in decoded if op["tweet_id"] == 1 for r in op["to"]] == recipients
    assert decoded[-1] == add(2, [4])


@hsettings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**63 - 1), st.lists(st.integers(1, 2**62 - 1).map(lambda u: 2 * u),
                                                               min_size=1, max_size=400)),
                max_size=40, unique_by=lambda spec: spec[0]),
       st.integers(1024, 8192))
def test_split_messages_keep_every_op_and_fit(ops_spec, limit):
    ops = [add(t, to) for t, to in ops_spec]
    messages = encode_messages([typed(op) for op in ops], limit)
    assert all(len(m) <= limit for m in messages)
    decoded = wire(messages, limit)
    # Same ops in the same order once the parts of a split op (consecutive, same tweet) are joined.
    joined: list[dict] = []
    for op in decoded:
        if joined and joined[-1]["tweet_id"] == op["tweet_id"]:
            joined[-1] = {**joined[-1], "to": joined[-1]["to"] + op["to"]}
        else:
            joined.append(op)
    assert joined == ops


def test_duplicate_members_are_refused():
    ok = msg(add(1, [2]))
    with pytest.raises(ContractError, match="'ops' appears more than once"):
        decode_ops(ok[:-1] + b',"ops":' + orjson.dumps([add(5, [4])]) + b"}", EVEN, 1 << 20)
    with pytest.raises(ContractError, match="'tweet_id' appears more than once"):
        decode_ops(ok.replace(b'"tweet_id":1', b'"tweet_id":1,"tweet_id":3'), EVEN, 1 << 20)
