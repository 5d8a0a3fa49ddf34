"""Cassandra adapter: asyncio bridge, prepared statements, bounded concurrency.

cassandra-driver has no native asyncio: ``execute_async`` returns a
``ResponseFuture`` whose callbacks run on the driver's event-loop thread, so
results are handed to the asyncio loop with ``loop.call_soon_threadsafe``.
Every statement here is prepared once, and ``execute_many`` keeps at most
``concurrency`` requests in flight.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT, Session
from cassandra.concurrent import execute_concurrent
from cassandra.policies import RoundRobinPolicy
from cassandra.query import PreparedStatement

from settings import Settings

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "ops" / "schema.cql"


def connect(settings: Settings, *, keyspace: str | None = None) -> tuple[Cluster, Session]:
    profile = ExecutionProfile(
        load_balancing_policy=RoundRobinPolicy(),
        consistency_level=ConsistencyLevel.LOCAL_QUORUM,
        request_timeout=30,
    )
    cluster = Cluster(
        list(settings.cassandra_hosts),
        port=settings.cassandra_port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=5,
    )
    session = cluster.connect(keyspace)
    return cluster, session


def schema_statements(keyspace: str) -> list[str]:
    text = SCHEMA_FILE.read_text().format(keyspace=keyspace)
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


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
    concurrency: int = 64
    _stmts: dict[str, PreparedStatement] = field(default_factory=dict)

    QUERIES = {
        "insert_tweet": "INSERT INTO {ks}.tweets (tweet_id, author_id, text, created_at) VALUES (?, ?, ?, ?)",
        "mark_deleted": "UPDATE {ks}.tweets SET deleted_at = ? WHERE tweet_id = ?",
        "get_tweet": "SELECT tweet_id, author_id, text, created_at, deleted_at FROM {ks}.tweets WHERE tweet_id = ?",
        "insert_author_tl": "INSERT INTO {ks}.author_timeline (author_id, tweet_id) VALUES (?, ?)",
        "delete_author_tl": "DELETE FROM {ks}.author_timeline WHERE author_id = ? AND tweet_id = ?",
        "author_tl_below": "SELECT tweet_id FROM {ks}.author_timeline WHERE author_id = ? AND tweet_id < ? LIMIT ?",
        "author_tl_above": "SELECT tweet_id FROM {ks}.author_timeline WHERE author_id = ? AND tweet_id > ? LIMIT ?",
        "insert_user_tl": "INSERT INTO {ks}.user_timeline (user_id, tweet_id, author_id) VALUES (?, ?, ?)",
        "delete_user_tl": "DELETE FROM {ks}.user_timeline WHERE user_id = ? AND tweet_id = ?",
        "clear_user_tl": "DELETE FROM {ks}.user_timeline WHERE user_id = ?",
        "user_tl_below": "SELECT tweet_id, author_id FROM {ks}.user_timeline WHERE user_id = ? AND tweet_id < ? AND tweet_id > ? LIMIT ?",
        "get_meta": "SELECT floor, stale FROM {ks}.timeline_meta WHERE user_id = ?",
        "set_meta": "INSERT INTO {ks}.timeline_meta (user_id, floor, stale, rebuilt_at) VALUES (?, ?, ?, ?)",
        "set_stale": "UPDATE {ks}.timeline_meta SET stale = ? WHERE user_id = ?",
        "set_floor": "UPDATE {ks}.timeline_meta SET floor = ? WHERE user_id = ?",
        "insert_following": "INSERT INTO {ks}.following (user_id, followee_id, since) VALUES (?, ?, ?)",
        "delete_following": "DELETE FROM {ks}.following WHERE user_id = ? AND followee_id = ?",
        "get_following": "SELECT followee_id FROM {ks}.following WHERE user_id = ?",
        "set_author_status": "INSERT INTO {ks}.author_status (author_id, followers, celebrity, celebrity_since) VALUES (?, ?, ?, ?)",
        "get_author_status": "SELECT followers, celebrity, celebrity_since FROM {ks}.author_status WHERE author_id = ?",
        "all_celebrities": "SELECT author_id, celebrity FROM {ks}.author_status",
        # Read path (sinks/reader.py): one query for many tweets / many authors.
        "get_tweets": "SELECT tweet_id, author_id, text, created_at, deleted_at FROM {ks}.tweets WHERE tweet_id IN ?",
        "authors_tl_below": (
            "SELECT author_id, tweet_id FROM {ks}.author_timeline"
            " WHERE author_id IN ? AND tweet_id < ? PER PARTITION LIMIT ?"
        ),
        "ping": "SELECT release_version FROM system.local",
    }

    @classmethod
    def open(cls, settings: Settings, *, concurrency: int = 64) -> "CassandraStore":
        _, session = connect(settings)
        store = cls(session=session, keyspace=settings.cassandra_keyspace, concurrency=concurrency)
        store.prepare()
        return store

    def prepare(self) -> None:
        for name, cql in self.QUERIES.items():
            self._stmts[name] = self.session.prepare(cql.format(ks=self.keyspace))

    def close(self) -> None:
        self.session.cluster.shutdown()

    async def execute(self, name: str, params: Sequence[Any] = ()) -> list:
        loop = asyncio.get_running_loop()
        rows = await _bridge(self.session.execute_async(self._stmts[name], params), loop)
        return list(rows) if rows is not None else []

    async def execute_many(self, items: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run many writes, at most ``concurrency`` in flight; raise the first error.

        Uses the driver's own ``execute_concurrent`` (callback-chained on its I/O
        thread) from a worker thread: one thread hop per call instead of one
        asyncio task and future per statement.
        """
        statements = [(self._stmts[name], params) for name, params in items]
        if not statements:
            return
        await asyncio.to_thread(
            execute_concurrent, self.session, statements,
            concurrency=self.concurrency, raise_on_first_error=True, results_generator=False,
        )

    async def query_many(self, name: str, params_list: Sequence[Sequence[Any]]) -> list[list]:
        """Run the same read for many parameter sets concurrently; results in input order."""
        sem = asyncio.Semaphore(self.concurrency)

        async def one(params: Sequence[Any]) -> list:
            async with sem:
                return await self.execute(name, params)

        return list(await asyncio.gather(*(one(p) for p in params_list)))
