"""plan_batches and the row keys: which writes may share an UNLOGGED batch (no servers)."""
from __future__ import annotations

import random

import pytest

from sinks.cassandra import CassandraStore
from sinks.cassandra_batches import SPREAD_FLOOR, batch_limits, estimate_bytes, parse_bytes, plan_batches, spread_statements

STORE = CassandraStore(session=None, keyspace="ks")  # type: ignore[arg-type] - only the pure helpers are used


def plan(items, *, n=3, max_bytes=10_000, group_of=None, max_partitions=None):
    return plan_batches(items, max_statements=n, max_bytes=max_bytes, row_of=STORE._row_of,
                        size_of=STORE._size_of, group_of=group_of, max_partitions=max_partitions)


def ins(user: int, tweet: int, author: int = 1) -> tuple[str, tuple]:
    return ("insert_user_tl", (user, tweet, author))


def dele(user: int, tweet: int) -> tuple[str, tuple]:
    return ("delete_user_tl", (user, tweet))


def test_chunks_keep_input_order_and_bound_the_count() -> None:
    items = [ins(u, 100) for u in range(7)]
    assert plan(items, n=3) == [items[0:3], items[3:6], items[6:7]]


def test_empty_input_gives_no_batches() -> None:
    assert plan([]) == []


def test_bytes_bound_and_an_oversized_item_travels_alone() -> None:
    small = ("insert_tweet", (1, 2, "x" * 10, 3))
    big = ("insert_tweet", (2, 2, "y" * 500, 3))
    size = estimate_bytes(small[1])
    items = [small, big, ("insert_tweet", (3, 2, "z" * 10, 3))]
    assert plan(items, n=10, max_bytes=size * 2) == [[small], [big], [items[2]]]


def test_estimate_counts_utf8_bytes() -> None:
    assert estimate_bytes(("é",)) - estimate_bytes(("e",)) == 1
    assert estimate_bytes((1, None, True)) == estimate_bytes((1,)) + 8


def test_same_row_never_shares_a_batch_and_the_later_write_comes_later() -> None:
    # an insert then a delete of the same row: one timestamp per batch, and a tombstone wins a tie
    items = [ins(1, 10), ins(2, 10), dele(1, 10), ins(3, 10)]
    batches = plan(items, n=10)
    assert batches == [[ins(1, 10), ins(2, 10)], [dele(1, 10), ins(3, 10)]]


def test_other_rows_of_the_same_partition_share_a_batch() -> None:
    items = [ins(1, 10), dele(1, 11), ins(1, 12)]
    assert plan(items, n=10) == [items]


def test_tables_are_part_of_the_row_key() -> None:
    # tweets(tweet_id=5) and author_timeline(5, ...) are different rows
    items = [("insert_tweet", (5, 1, "t", 0)), ("insert_author_tl", (5, 1)), ("insert_author_tl", (1, 5))]
    assert plan(items, n=10) == [items]


def test_mark_deleted_and_insert_tweet_key_the_same_tweet_row() -> None:
    items = [("insert_tweet", (5, 1, "t", 0)), ("mark_deleted", (99, 5))]
    assert plan(items, n=10) == [[items[0]], [items[1]]]


def test_statement_without_a_row_key_is_alone_and_a_barrier() -> None:
    # clear_user_tl is a partition delete: nothing after it may land in a batch opened before it
    items = [ins(1, 10), ins(2, 10), ("clear_user_tl", (1,)), ins(1, 11), ins(3, 10)]
    assert plan(items, n=10) == [items[0:2], [items[2]], items[3:5]]
    assert plan([("ceiling_insert", (1, 2, 3)), ("ceiling_insert", (1, 3, 3))]) == [
        [("ceiling_insert", (1, 2, 3))], [("ceiling_insert", (1, 3, 3))]]


def test_groups_never_mix_and_batches_appear_where_they_were_opened() -> None:
    items = [ins(u, 10) for u in range(6)]
    batches = plan(items, n=2, group_of=lambda it: it[1][0] % 2)
    assert batches == [[items[0], items[2]], [items[1], items[3]], [items[4]], [items[5]]]


def test_rejects_a_zero_batch_size() -> None:
    with pytest.raises(ValueError):
        plan([ins(1, 1)], n=0)


def test_every_row_key_matches_its_cql() -> None:
    for name, (table, idx) in CassandraStore.ROW_KEYS.items():
        cql = CassandraStore.QUERIES[name]
        assert f".{table} " in cql, name
        assert cql.upper().startswith(("INSERT", "UPDATE", "DELETE")), name
        assert max(idx) < cql.count("?"), name


def simulate(items, batches):
    """Apply batches in order with one timestamp per batch; a tombstone wins a tie. Returns row -> present."""
    cells: dict = {}
    for ts, batch in enumerate(batches):
        for name, params in batch:
            row = STORE._row_of((name, params))
            present = not name.startswith("delete")
            old = cells.get(row)
            if old is None or ts > old[0] or (ts == old[0] and not present):
                cells[row] = (ts, present)
    return {row: present for row, (_, present) in cells.items()}


@pytest.mark.parametrize("seed", range(20))
def test_batched_result_equals_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    items = [(ins if rng.random() < 0.6 else dele)(rng.randrange(5), rng.randrange(4)) for _ in range(60)]
    one_by_one = [[it] for it in items]
    for n in (1, 2, 7, 50):
        for max_partitions in (1, 2, None):
            batches = plan(items, n=n, group_of=lambda it: it[1][0] % 3, max_partitions=max_partitions)
            assert sorted(map(repr, (it for b in batches for it in b))) == sorted(map(repr, items))
            for b in batches:
                assert len(b) <= n and len({STORE._row_of(it) for it in b}) == len(b)
                assert len({it[1][0] % 3 for it in b}) == 1
                assert max_partitions is None or len({it[1][0] for it in b}) <= max_partitions
            assert simulate(items, batches) == simulate(items, one_by_one)


def test_partition_cap_counts_distinct_partitions() -> None:
    # rows of one user share a partition: 3 rows of user 1 and 1 of user 2 fit a 2-partition batch
    items = [ins(1, 10), ins(1, 11), ins(2, 10), ins(1, 12), ins(3, 10), ins(3, 11)]
    batches = plan_batches(items, max_statements=10, max_bytes=10_000, max_partitions=2,
                           row_of=STORE._row_of, size_of=STORE._size_of)
    assert batches == [items[0:4], items[4:6]]


def test_batch_limits_follow_the_server_warnings() -> None:
    defaults = batch_limits({}, batch_size=32, batch_bytes=16 * 1024)
    assert defaults == (10, 2560)  # Cassandra's defaults: 10 partitions, 5 KiB (half of it)
    ours = {"unlogged_batch_across_partitions_warn_threshold": "64", "batch_size_warn_threshold": "32KiB"}
    assert batch_limits(ours, batch_size=32, batch_bytes=16 * 1024) == (32, 16 * 1024)
    assert batch_limits({"unlogged_batch_across_partitions_warn_threshold": "x",
                         "batch_size_warn_threshold": "?"}, batch_size=32, batch_bytes=8192) == (10, 2560)


def test_parse_bytes() -> None:
    assert parse_bytes("5KiB") == 5120
    assert parse_bytes("1MiB") == 1 << 20
    assert parse_bytes("512B") == 512
    assert parse_bytes("null") is None and parse_bytes("") is None


# --- the store's request building, offline: real prepared statements, a fake cluster --------


class _Host:
    def __init__(self, host_id: str) -> None:
        self.host_id = host_id


class _Metadata:
    """Two or one hosts; a partition's replica is chosen by its key's parity."""

    def __init__(self, hosts: int) -> None:
        self.hosts = [_Host(f"h{i}") for i in range(hosts)]

    def all_hosts(self) -> list:
        return self.hosts

    def get_replicas(self, keyspace: str, routing_key: bytes) -> list:
        return [self.hosts[routing_key[-1] % len(self.hosts)]]


class _Session:
    def __init__(self, hosts: int) -> None:
        self.cluster = type("C", (), {"metadata": _Metadata(hosts)})()


def _store(hosts: int, batch_size: int = 4) -> CassandraStore:
    from cassandra.cqltypes import LongType
    from cassandra.protocol import ColumnMetadata
    from cassandra.query import PreparedStatement

    def prepared(name: str, table: str, cols: list[str]) -> PreparedStatement:
        meta = [ColumnMetadata("ks", table, c, LongType) for c in cols]
        return PreparedStatement(meta, name.encode(), [0], CassandraStore.QUERIES[name], "ks", 5, None, None)

    store = CassandraStore(session=_Session(hosts), keyspace="ks", batch_size=batch_size)  # type: ignore[arg-type]
    store._stmts["insert_user_tl"] = prepared("insert_user_tl", "user_timeline", ["user_id", "tweet_id", "author_id"])
    store._stmts["delete_user_tl"] = prepared("delete_user_tl", "user_timeline", ["user_id", "tweet_id"])
    store._stmts["clear_user_tl"] = prepared("clear_user_tl", "user_timeline", ["user_id"])
    return store


def _shape(requests) -> list:
    from cassandra.query import BatchStatement, BatchType

    out = []
    for statement, _ in requests:
        if isinstance(statement, BatchStatement):
            assert statement.batch_type == BatchType.UNLOGGED
            out.append(len(statement))
        else:
            out.append(1)
    return out


def test_single_host_puts_any_partitions_in_one_batch() -> None:
    store = _store(hosts=1)
    requests, concurrency = store._batched([ins(u, 10) for u in range(6)])
    assert _shape(requests) == [4, 2] and concurrency == store.batch_concurrency


def test_several_hosts_batch_only_partitions_with_the_same_replicas() -> None:
    store = _store(hosts=2)
    requests, _ = store._batched([ins(u, 10) for u in range(6)])
    assert _shape(requests) == [3, 3]
    from cassandra.query import BatchStatement

    for statement, _ in requests:
        assert isinstance(statement, BatchStatement)
        users = {int.from_bytes(values[0], "big", signed=True) for _, _, values in statement._statements_and_parameters}
        assert len({u % 2 for u in users}) == 1


def test_unbatchable_statements_go_alone_and_one_by_one_when_nothing_batches() -> None:
    store = _store(hosts=1)
    requests, concurrency = store._batched([("clear_user_tl", (1,)), ("clear_user_tl", (2,))])
    assert _shape(requests) == [1, 1] and concurrency == store.concurrency
    requests, _ = store._batched([ins(1, 10), ("clear_user_tl", (1,)), ins(1, 11), dele(1, 11)])
    assert _shape(requests) == [1, 1, 1, 1]


@pytest.mark.parametrize(("n", "expected"), [
    (0, SPREAD_FLOOR), (1, SPREAD_FLOOR), (75, SPREAD_FLOOR),  # a small call: batches of the floor, side by side
    (300, 10), (32 * 20 + 1, 21),  # spread over the 32 in flight
    (32 * 32, 32), (1700, 32), (10**6, 32),  # a call that fills 32 full batches: full batches
])
def test_a_small_call_is_spread_over_smaller_batches_a_large_one_keeps_full_ones(n: int, expected: int) -> None:
    assert spread_statements(n, 32, 32) == expected


def test_the_spread_never_exceeds_the_limit_nor_goes_below_the_floor() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        n, limit, flight, floor = rng.randrange(0, 5000), rng.randrange(1, 64), rng.randrange(1, 64), rng.randrange(1, 16)
        size = spread_statements(n, limit, flight, floor)
        assert 1 <= size <= limit
        assert size >= min(limit, floor)
        if size < limit:  # spread: n fits the batches in flight at this size
            assert -(-n // size) <= flight or size == floor
    with pytest.raises(ValueError):
        spread_statements(10, 0, 32)


@pytest.mark.parametrize("hosts", [1, 2])
def test_packed_values_make_the_requests_binding_makes(hosts: int) -> None:
    """With the packers (``sinks/cassandra_values.py``) the store sends what it sends binding
    every statement: the same statements, values, batch routing keys and keyspaces, the same
    replica groups; a null value (a packer declines) is bound."""
    from cassandra.query import BatchStatement

    from sinks.cassandra_values import value_packer

    items = [ins(u, 10 + u) for u in range(9)] + [("insert_user_tl", (3, 99, None)), dele(4, 14), ins(2**40 + 1, 5)]
    bound, packed = _store(hosts), _store(hosts)
    packed._packers = {name: value_packer(stmt) for name, stmt in packed._stmts.items()}
    assert packed._packers and not bound._packers

    def sent(store: CassandraStore) -> list:
        requests, concurrency = store._batched(items)
        out = [concurrency]
        for statement, params in requests:
            if isinstance(statement, BatchStatement):
                out.append((statement._statements_and_parameters, statement.routing_key, statement.keyspace))
            else:
                out.append((statement.query_id, params))
        return out

    assert sent(packed) == sent(bound)
    assert len(sent(packed)) > 2  # batches were made
