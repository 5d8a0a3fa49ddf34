"""A prepared statement's parameters serialized without the driver's ``BoundStatement``.

``BatchStatement.add(prepared, params)`` binds each statement through a ``BoundStatement``
(attributes copied from the prepared statement, a column descriptor and an encryption check
per value, a routing key): ~4.4 us per timeline row on this machine, for three bigints.
:func:`value_packer` gives a function that serializes the values as ``bind`` would (the
same bytes, checked for every statement by ``tests/integration/test_cassandra_values.py``)
in ~2 us, for ``CassandraStore._batched`` to append with the driver's
``BatchStatement._add_statement_and_params`` (the driver's own second step of ``add``;
cassandra-driver 3.30, pinned in requirements.lock).

The packer answers None whenever ``bind`` would do anything but serialize each value with its
column's type: a null or unset value, a count of values other than the statement's, a value
its type rejects, a statement with column encryption or a custom payload. The caller then
uses ``BatchStatement.add``, which does what the driver does, errors included. A batch's
first statement always goes through ``add``: it sets the batch's routing key and keyspace.
"""
from __future__ import annotations

import functools
import struct
from typing import Any, Callable, Sequence

Packer = Callable[[Sequence[Any]], "list[bytes] | None"]

_BIGINT = struct.Struct(">q").pack  # cassandra.marshal.int64_pack, as LongType.serialize uses


def _serialize(serialize: Callable[[Any, int], bytes], version: int, value: Any) -> bytes:
    return serialize(value, version)


def value_packer(stmt: Any) -> Packer | None:
    """A packer for prepared statement ``stmt``'s parameters (module doc); None: always bind."""
    if getattr(stmt, "column_encryption_policy", None) is not None or stmt.custom_payload:
        return None
    types = [col.type for col in stmt.column_metadata]
    n = len(types)
    if all(t.typename == "bigint" for t in types):

        def pack_bigints(params: Sequence[Any]) -> list[bytes] | None:
            if len(params) != n:
                return None
            try:
                return list(map(_BIGINT, params))
            except struct.error:  # None, UNSET_VALUE, a float, out of range: bind decides
                return None

        return pack_bigints
    version = stmt.protocol_version
    serializers = [_BIGINT if t.typename == "bigint" else functools.partial(_serialize, t.serialize, version)
                   for t in types]

    def pack(params: Sequence[Any]) -> list[bytes] | None:
        if len(params) != n:
            return None
        out = []
        try:
            for serialize, value in zip(serializers, params):
                if value is None:
                    return None
                out.append(serialize(value))
        except Exception:  # noqa: BLE001 - whatever bind would do with it (raise, unset), bind does
            return None
        return out

    return pack
