"""Cassandra adapter: asyncio bridge, prepared statements, batched writes.

cassandra-driver has no native asyncio: ``execute_async`` returns a
``ResponseFuture`` whose callbacks run on the driver's event-loop thread, so
results are handed to the asyncio loop with ``loop.call_soon_threadsafe``.
Every statement here is prepared once.

``execute_many`` sends its writes as UNLOGGED batches of at most
``batch_size`` statements (and about ``batch_bytes`` bytes), at most
``batch_concurrency`` batches in flight: one driver request (and one
coordinator round) per batch instead of per row, which is what the driver's
I/O thread and the server spend most of their CPU on. A batch spans at most
as many partitions, and about half as many bytes, as the server's batch
warnings allow (read from ``system_views.settings`` when the store opens):
each warning would cost a log line in the server and one in the driver per
request. ``plan_batches`` (pure, ``sinks/cassandra_batches.py``)
decides which statements share a batch:

* only statements whose partitions live on the same replicas (one group per
  replica set; with a single host, one group), so a batch never makes its
  coordinator fan out to other nodes;
* never two statements on the same row: statements of one batch share one
  write timestamp, and with equal timestamps a tombstone beats an insert
  whatever their order. Rows are known from ``ROW_KEYS``; a statement that is
  not listed there (a partition delete, a bench-only statement) is sent alone
  and ends the open batches, so everything after it is written after it.

Statements and batches are submitted in input order and the driver stamps each
request with a client-side, monotonic timestamp, so within one call a later
statement still wins over an earlier one on the same row, as it did unbatched.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Hashable, Iterable, Sequence

from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT, Session
from cassandra.concurrent import execute_concurrent
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, named_tuple_factory

from policies.first_wins import StoredTweet
from sinks.cassandra_batches import (
    BATCH_BYTES, BATCH_CONCURRENCY, BATCH_SIZE, batch_limits, estimate_bytes, plan_batches, spread_statements,
)
from sinks.cassandra_cql import QUERIES, ROW_KEYS
from sinks.cassandra_sync import CommitLogGate, gate_lag_s, needs_gate, sync_lag_s
from sinks.cassandra_values import Packer, value_packer
from settings import Settings

_log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1024)
def _row_type(columns: tuple[str, ...]) -> Any:
    """The driver's named-tuple row class for these columns (its own naming rules), built once."""
    return type(named_tuple_factory(list(columns), [tuple(range(len(columns)))])[0])


def cached_named_tuple_factory(columns: list[str], rows: list[tuple[Any, ...]]) -> list[Any]:
    """The driver's default row factory (``named_tuple_factory``: the same rows) without
    building a new ``namedtuple`` class for every result: that took ~54 us per result on this
    machine (~6% of the worker's driver thread in a py-spy profile), ~1 us here; 800 timeline
    rows ~480 -> ~290 us."""
    make = _row_type(tuple(columns))._make
    return [make(row) for row in rows]


def new_cluster(settings: Settings, *, connect_timeout: float = 10.0, request_timeout: float = 30.0) -> Cluster:
    """A driver ``Cluster`` for the configured Cassandra, the one every part of the tree uses
    (the caller shuts it down): token-aware routing (a request goes to a replica of its
    partition) over round robin in the local DC, reads and writes at
    ``TL_CASSANDRA_CONSISTENCY``."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.cassandra_local_dc or None)),
        consistency_level=ConsistencyLevel.name_to_value[settings.cassandra_consistency],
        request_timeout=request_timeout,
        row_factory=cached_named_tuple_factory,
    )
    return Cluster(
        list(settings.cassandra_hosts),
        port=settings.cassandra_port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=5,
        connect_timeout=connect_timeout,
        control_connection_timeout=connect_timeout,
        # The driver's default (exponential from 1 s up to 10 minutes) tried a Cassandra that
        # was back after 88 s only about 40 s later (the fault suite, ops/faults): retry a
        # lost host at most every 2 s (4 s until 2026-12-02: up to 4 s of a restarted node unused).
        reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.5, max_delay=2.0),
    )


def connect(settings: Settings, *, keyspace: str | None = None) -> tuple[Cluster, Session]:
    cluster = new_cluster(settings)
    session = cluster.connect(keyspace)
    return cluster, session


def _bridge(rf: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    fut: asyncio.Future = loop.create_future()

    def ok(rows: Any) -> None:
        loop.call_soon_threadsafe(_resolve, fut, rows, None)

    def err(exc: BaseException) -> None:
        loop.call_soon_threadsafe(_resolve, fut, None, exc)

    rf.add_callbacks(ok, err)
    return fut


def _resolve(fut: asyncio.Future, rows: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(rows)


@dataclass
class CassandraStore:
    """The project's Cassandra statements, prepared once per session."""

    session: Session
    keyspace: str
    concurrency: int = 64  # requests in flight when statements go one by one
    batch_size: int = BATCH_SIZE  # statements per UNLOGGED batch; 1 = no batching
    batch_bytes: int = BATCH_BYTES
    batch_concurrency: int = BATCH_CONCURRENCY  # batches in flight
    batch_partitions: int = BATCH_SIZE  # distinct partitions per batch (see configure_batches)
    _stmts: dict[str, PreparedStatement] = field(default_factory=dict)
    # name -> its parameters' serializer for batches (sinks/cassandra_values.py); absent: bind
    _packers: dict[str, Packer] = field(default_factory=dict)
    # Acks wait for the commit log (sinks/cassandra_sync.py); None: an acknowledged write is
    # already on disk (commitlog_sync batch) or on replicas.
    gate: CommitLogGate | None = None

    QUERIES: ClassVar[dict[str, str]] = QUERIES
    ROW_KEYS: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = ROW_KEYS

    @classmethod
    def open(cls, settings: Settings, *, concurrency: int = 64, batch_size: int = BATCH_SIZE,
             durable_acks: bool = False) -> "CassandraStore":
        """``durable_acks``: a writer whose callers commit Kafka offsets after its writes (the
        worker): set up ``gate`` when the node acknowledges before its commit log is on disk."""
        _, session = connect(settings)
        store = cls(session=session, keyspace=settings.cassandra_keyspace, concurrency=concurrency,
                    batch_size=batch_size, batch_concurrency=settings.cassandra_batches_in_flight)
        store.prepare()
        store.configure_batches()
        if durable_acks:
            store.configure_gate(settings)
        return store

    SYNC_SETTINGS = ("commitlog_sync", "commitlog_sync_period", "periodic_commitlog_sync_lag_block")

    def configure_gate(self, settings: Settings) -> None:
        """Read how the node syncs its commit log (``system_views.settings``) and how many
        replicas and nodes the local data center has; make ``gate`` if acks must wait."""
        lag = sync_lag_s(self.server_settings(self.SYNC_SETTINGS))  # unreadable: raised, never guessed
        metadata = self.session.cluster.metadata
        local_dc = settings.cassandra_local_dc
        nodes = [h for h in metadata.all_hosts() if not local_dc or h.datacenter == local_dc]
        strategy = metadata.keyspaces[self.keyspace].replication_strategy
        factors = getattr(strategy, "dc_replication_factors", None)
        if factors is not None:
            replicas = int(factors.get(local_dc, 0)) if local_dc else min((int(f) for f in factors.values()), default=1)
        else:
            replicas = int(getattr(strategy, "replication_factor", 1))
        if not needs_gate(lag, len(nodes), replicas):
            return
        if settings.cassandra_commitlog_gate == "off":
            _log.warning("TL_CASSANDRA_COMMITLOG_GATE=off with commitlog_sync: periodic: Kafka offsets are "
                         "committed before Cassandra's commit log is on disk; a crash of Cassandra loses writes")
            return
        writer = f"{socket.gethostname()}:{os.getpid()}:{settings.cassandra_keyspace}"

        async def probe() -> None:
            await self.execute("commitlog_probe", (writer, time.time_ns() // 1_000_000))

        async def generation() -> int:
            return (await self.execute("generation"))[0].gossip_generation

        gen = self.session.execute(self._stmts["generation"]).one().gossip_generation
        self.gate = CommitLogGate(gate_lag_s(lag), probe, generation, gen)

    BATCH_SETTINGS = ("unlogged_batch_across_partitions_warn_threshold", "batch_size_warn_threshold")

    def server_settings(self, names: Sequence[str]) -> dict[str, str | None]:
        """The values ``system_views.settings`` shows for ``names`` (None: not set)."""
        server: dict[str, str | None] = {}
        for name in names:
            row = self.session.execute("SELECT value FROM system_views.settings WHERE name = %s", (name,)).one()
            server[name] = row.value if row is not None else None
        return server

    def configure_batches(self) -> None:
        """Fit batches under the server's batch warnings (each warning is a log line in the server
        and, per request, in the driver): read them from ``system_views.settings``."""
        try:
            server = {k: v for k, v in self.server_settings(self.BATCH_SETTINGS).items() if v is not None}
        except Exception:  # noqa: BLE001 - an older server: assume its defaults
            server = {}
        self.batch_partitions, self.batch_bytes = batch_limits(
            server, batch_size=self.batch_size, batch_bytes=self.batch_bytes
        )

    def prepare(self) -> None:
        for name, cql in self.QUERIES.items():
            stmt = self._stmts[name] = self.session.prepare(cql.format(ks=self.keyspace))
            packer = value_packer(stmt)
            if packer is not None:
                self._packers[name] = packer

    def close(self) -> None:
        self.session.cluster.shutdown()

    async def execute(self, name: str, params: Sequence[Any] = ()) -> list:
        loop = asyncio.get_running_loop()
        rows = await _bridge(self.session.execute_async(self._stmts[name], params), loop)
        return list(rows) if rows is not None else []

    async def execute_all(self, name: str, params: Sequence[Any] = ()) -> list:
        """Every row of a query, all pages (``execute`` returns the first page only): in a
        worker thread, for the rare reads that can exceed one page."""
        stmt = self._stmts[name]
        return await asyncio.to_thread(lambda: list(self.session.execute(stmt, params)))

    async def execute_many(self, items: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run many writes as UNLOGGED batches (see the module doc); raise the first error.

        Plans the batches and runs the driver's own ``execute_concurrent``
        (callback-chained on its I/O thread) in a worker thread: one thread hop
        per call instead of one asyncio task and future per request.
        ``batch_size`` 1 sends the statements one by one, at most
        ``concurrency`` in flight.
        """
        items = list(items)
        if items:
            gate = self.gate
            sent = gate.sent() if gate is not None else 0.0
            await asyncio.to_thread(self._execute_many, items)
            if gate is not None:
                gate.succeeded(sent)  # a write acknowledged: the commit log synced up to ``sent - L``

    def _execute_many(self, items: list[tuple[str, Sequence[Any]]]) -> None:
        if self.batch_size <= 1:
            requests: list[tuple[Any, Any]] = [(self._stmts[name], params) for name, params in items]
            concurrency = self.concurrency
        else:
            requests, concurrency = self._batched(items)
        execute_concurrent(self.session, requests, concurrency=concurrency, raise_on_first_error=True,
                           results_generator=False)

    def _row_of(self, item: tuple[str, Sequence[Any]]) -> tuple | None:
        """(table, partition key, clustering key...) of the row a write touches; None: not batchable."""
        name, params = item
        key = self.ROW_KEYS.get(name)
        if key is None:
            return None
        table, idx = key
        if len(idx) == 1:
            return (table, params[idx[0]])
        return (table, *(params[i] for i in idx))

    @staticmethod
    def _size_of(item: tuple[str, Sequence[Any]]) -> int:
        return estimate_bytes(item[1])

    def _replica_group(self) -> Callable[[Any], Hashable] | None:
        """None (one group) with a single host; else the replica set of a routing key's partition."""
        metadata = self.session.cluster.metadata
        if len(metadata.all_hosts()) <= 1:
            return None
        cache: dict[bytes | None, Hashable] = {}
        keyspace = self.keyspace

        def group(routing_key: bytes | None) -> Hashable:
            found = cache.get(routing_key)
            if found is None:
                replicas = metadata.get_replicas(keyspace, routing_key) if routing_key is not None else []
                found = cache[routing_key] = frozenset(h.host_id for h in replicas)
            return found

        return group

    def _packed(self, item: tuple[str, Sequence[Any]]) -> list[bytes] | None:
        """``item``'s values serialized by its statement's packer; None: it must be bound."""
        packer = self._packers.get(item[0])
        return packer(item[1]) if packer is not None else None

    def _routing_key(self, item: tuple[str, Sequence[Any]], values: list[bytes] | None) -> bytes | None:
        """The routing key ``bind`` would give ``item``: for a one-column partition key, that
        column's packed value (``values``); else the driver's (a bind)."""
        name, params = item
        stmt = self._stmts[name]
        key = stmt.routing_key_indexes
        if values is not None and key is not None and len(key) == 1:
            return values[key[0]]
        return stmt.bind(params).routing_key

    def _batch_of(self, batch: Sequence[tuple[str, Sequence[Any]]],
                  packed: Sequence[list[bytes] | None] | None = None) -> BatchStatement:
        """An UNLOGGED batch of ``batch``'s statements, as ``BatchStatement.add`` makes it: the
        first through ``add`` (the batch's routing key and keyspace), the others serialized
        by their packer where it can (``sinks/cassandra_values.py``: the same values, half
        the CPU), else through ``add``. ``packed``: the items' values already packed (``_packed``)."""
        stmts = self._stmts
        bs = BatchStatement(batch_type=BatchType.UNLOGGED)
        name, params = batch[0]
        bs.add(stmts[name], params)
        append = bs._add_statement_and_params
        for i in range(1, len(batch)):
            values = packed[i] if packed is not None else self._packed(batch[i])
            name, params = batch[i]
            if values is None:
                bs.add(stmts[name], params)
            else:
                append(True, stmts[name].query_id, values)
        return bs

    def _batched(self, items: list[tuple[str, Sequence[Any]]]) -> tuple[list[tuple[Any, Any]], int]:
        stmts = self._stmts
        replica_group = self._replica_group()
        # A small call in smaller batches, side by side (spread_statements: stage 2's writes at idle).
        size = spread_statements(len(items), self.batch_size, self.batch_concurrency)
        partitions = min(self.batch_partitions, size)
        if replica_group is None:  # single host: any statements may share a batch
            plan = plan_batches(items, max_statements=size, max_bytes=self.batch_bytes,
                                max_partitions=partitions, row_of=self._row_of, size_of=self._size_of)
            requests: list[tuple[Any, Any]] = []
            for batch in plan:
                if len(batch) == 1:
                    name, params = batch[0]
                    requests.append((stmts[name], params))
                    continue
                requests.append((self._batch_of(batch), None))
        else:
            # The routing key (partition) decides the replica set.
            # item -> (item, its packed values, its routing key): packed once for both.
            keyed = []
            for item in items:
                values = self._packed(item)
                keyed.append((item, values, self._routing_key(item, values)))
            plan = plan_batches(keyed, max_statements=size, max_bytes=self.batch_bytes,
                                max_partitions=partitions, row_of=lambda k: self._row_of(k[0]),
                                size_of=lambda k: self._size_of(k[0]), group_of=lambda k: replica_group(k[2]))
            requests = []
            for keyed_batch in plan:
                if len(keyed_batch) == 1:
                    name, params = keyed_batch[0][0]
                    requests.append((stmts[name], params))
                    continue
                requests.append((self._batch_of([k[0] for k in keyed_batch], [k[1] for k in keyed_batch]), None))
        batched = any(isinstance(r[0], BatchStatement) for r in requests)
        return requests, (self.batch_concurrency if batched else self.concurrency)

    async def read_tweets(self, tweet_ids: Iterable[int], *, chunk: int = 100) -> dict[int, StoredTweet]:
        """The stored rows of ``tweet_ids`` (absent ids are not in the answer), ``chunk`` ids per query."""
        ids = sorted(set(tweet_ids))
        if not ids:
            return {}
        chunks = [ids[i:i + chunk] for i in range(0, len(ids), chunk)]
        out: dict[int, StoredTweet] = {}
        for rows in await self.query_many("get_tweets", [(c,) for c in chunks]):
            for row in rows:
                out[row.tweet_id] = StoredTweet.of_row(row)
        return out

    async def query_many(self, name: str, params_list: Sequence[Sequence[Any]]) -> list[list]:
        """Run the same read for many parameter sets concurrently; results in input order."""
        sem = asyncio.Semaphore(self.concurrency)

        async def one(params: Sequence[Any]) -> list:
            async with sem:
                return await self.execute(name, params)

        return list(await asyncio.gather(*(one(p) for p in params_list)))
