"""``sinks/cassandra_values.py``: the driver's serializers' bytes, or None where bind must decide."""
from __future__ import annotations

from types import SimpleNamespace

from cassandra import cqltypes
from cassandra.query import UNSET_VALUE

from sinks.cassandra_values import value_packer


def stmt(*types, payload=None, encryption=None):
    return SimpleNamespace(column_metadata=[SimpleNamespace(type=t) for t in types], protocol_version=5,
                           custom_payload=payload, column_encryption_policy=encryption)


def test_bigints_pack_as_the_driver_serializes_them():
    pack = value_packer(stmt(cqltypes.LongType, cqltypes.LongType, cqltypes.LongType))
    for params in [(1, 2, 3), (0, -1, 2**63 - 1), (-(2**63), True, 42)]:
        assert pack(params) == [cqltypes.LongType.serialize(v, 5) for v in params]


def test_mixed_columns_use_each_type_s_serializer():
    pack = value_packer(stmt(cqltypes.LongType, cqltypes.UTF8Type, cqltypes.BooleanType))
    assert pack((7, "ünï ✓", False)) == [cqltypes.LongType.serialize(7, 5), "ünï ✓".encode(),
                                         cqltypes.BooleanType.serialize(False, 5)]


def test_anything_bind_would_treat_otherwise_is_declined():
    for pack, second in ((value_packer(stmt(cqltypes.LongType, cqltypes.LongType)), 1),
                         (value_packer(stmt(cqltypes.LongType, cqltypes.UTF8Type)), "x")):
        assert pack((1, second)) is not None
        assert pack((1,)) is None and pack((1, second, 3)) is None  # bind: unset padding, or ValueError
        for odd in (None, UNSET_VALUE, 1.5, "1", 2**63):
            assert pack((odd, second)) is None, odd
    assert value_packer(stmt(cqltypes.LongType, cqltypes.UTF8Type))((1, None)) is None


def test_statements_with_a_custom_payload_or_encryption_always_bind():
    assert value_packer(stmt(cqltypes.LongType, payload={"k": b"v"})) is None
    assert value_packer(stmt(cqltypes.LongType, encryption=object())) is None
