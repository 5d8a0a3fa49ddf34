"""``sinks/cassandra_values.py`` against the driver's own ``bind``, for every statement the store
prepares on the real Cassandra, and batches written through the packers read back as written."""
from __future__ import annotations

import asyncio
import random

from cassandra.query import UNSET_VALUE

from ops.schema import apply_cassandra
from sinks.cassandra import CassandraStore
from sinks.cassandra_values import value_packer
from tests.integration.pipeline_harness import drop, isolated_settings

SAMPLES = {
    "bigint": lambda rnd: rnd.choice([0, 1, -1, 2**63 - 1, -(2**63), rnd.randrange(-(2**63), 2**63)]),
    "int": lambda rnd: rnd.choice([0, -1, 2**31 - 1, -(2**31), rnd.randrange(-(2**31), 2**31)]),
    "boolean": lambda rnd: rnd.choice([True, False]),
    "varchar": lambda rnd: rnd.choice(["", "plain", "ünïcödé ✓ 🐦", "x" * 300]),
}


def sample(cql_type, rnd: random.Random):
    if cql_type.typename == "list":
        return [sample(cql_type.subtypes[0], rnd) for _ in range(rnd.randrange(0, 4))]
    assert cql_type.typename in SAMPLES, f"add samples for {cql_type.typename}"
    return SAMPLES[cql_type.typename](rnd)


def test_every_prepared_statement_packs_what_bind_binds(tmp_path):
    settings = isolated_settings(tmp_path)
    apply_cassandra(settings)
    store = CassandraStore.open(settings)
    rnd = random.Random(7)
    try:
        assert store._packers, "no statement has a packer: every batch would bind"
        for name, stmt in store._stmts.items():
            types = [c.type.typename for c in stmt.column_metadata]
            packer = value_packer(stmt)
            assert packer is not None and name in store._packers, name
            for _ in range(50):
                params = tuple(sample(c.type, rnd) for c in stmt.column_metadata)
                assert packer(params) == stmt.bind(params).values, (name, params)
            if not types:
                continue
            # Anything but one serializable value per column: the packer declines and bind decides.
            assert packer((*params, 1)) is None and packer(params[:-1]) is None, name
            for odd in (None, UNSET_VALUE, 1.5, object()):
                assert packer((odd, *params[1:])) is None, (name, odd)
            if types[0] == "bigint":
                assert packer((2**63, *params[1:])) is None, name
    finally:
        store.close()
        drop(settings)


async def test_batches_written_through_the_packers_read_back(tmp_path):
    """Timeline rows in batches (packed values after each batch's first, bound, statement), a
    row with a null author among them (bound): every row reads back as written."""
    settings = isolated_settings(tmp_path)
    apply_cassandra(settings)
    store = await asyncio.to_thread(CassandraStore.open, settings)
    try:
        rows = [(user, 10_000 + user * 100 + k, None if (user, k) == (3, 2) else 7_000 + k)
                for user in range(1, 41) for k in range(5)]
        await store.execute_many([("insert_user_tl", r) for r in rows])
        ks = settings.cassandra_keyspace
        got = await asyncio.to_thread(
            lambda: {(r.user_id, r.tweet_id, r.author_id)
                     for r in store.session.execute(f"SELECT user_id, tweet_id, author_id FROM {ks}.user_timeline")})
        assert got == set(rows)
    finally:
        await asyncio.to_thread(store.close)
        drop(settings)
