"""SIGTERM stops a worker within 10 s in every state, and acks nothing it did not finish.

One namespace, three workers in turn (one consumer group, the default
``TL_SHUTDOWN_GRACE_S``), each stopped with SIGTERM and timed:

1. **Stores down, retrying**: Cassandra and PostgreSQL unreachable (closed ports). The
   fanout and delivery agents cannot open their stores, the projection retries its
   batch (``timeline_sink_retries_total{what="postgres projection"}``, waited for).
2. **Full buffer**: Redis unreachable, 9,000 more tweets in the log. The fanout agent
   retries its batch (``timeline_store_retrying``), the projection goes on, and the
   fanout's stream buffer fills (``stream_buffer_maxsize``, 8,192): the consumer stops
   taking messages (``faust_messages_received_total`` stays put at 8,192+, checked).
3. **Idle**: working stores; it processes everything, catches up, and is stopped idle.

The first two cannot finish their batches, so they must end through the bounded
shutdown (exit code ``agents.shutdown.EXIT_CODE`` and its log line); the idle one stops
cleanly (exit code 0). The third worker must then have delivered every event produced
before: had a stopped worker acked (committed) a batch it did not finish, those tweets
would be missing from the follower's timeline (written by stage 2 only) or from the
PostgreSQL projection.
"""
from __future__ import annotations

import asyncio
import signal
import time
import urllib.parse
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from agents.shutdown import EXIT_CODE
from localenv.worker import Worker, free_port
from localenv.workload import produce
from ops.lag import wait_caught_up
from ops.schema import cassandra_cluster
from settings import Settings
from tests.integration.pipeline_harness import drop, isolated_settings, provision

STOP_LIMIT_S = 10.0
BUFFER_FILL = 9_000  # tweets produced for step 2: more than the stream buffer (8,192) holds
FOLLOWER = 9_000_001
AUTHORS = list(range(1, 21))
FIRST_TWEET = 1_800_000_000_000_000_000  # a Snowflake-sized id
CREATED_AT = 1_760_000_000_000


def tweets(start: int, count: int) -> list[dict]:
    return [{"type": "tweet_posted", "tweet_id": FIRST_TWEET + i, "author_id": AUTHORS[i % len(AUTHORS)],
             "text": f"tweet {i}", "created_at": CREATED_AT + i} for i in range(start, start + count)]


def closed_port_dsn(dsn: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{free_port()}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def metric(worker: Worker, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) at the worker's GET /metrics (0 if
    it does not answer)."""
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.web_port}", timeout=2.0) as client:
            resp = await client.get("/metrics")
    except httpx.HTTPError:
        return 0.0
    return sum(s.value for family in text_string_to_metric_families(resp.text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def wait_metric(worker: Worker, name: str, at_least: float, timeout: float, **labels: str) -> float:
    end = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < end:
        worker.check()
        value = await metric(worker, name, **labels)
        if value >= at_least:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{name} reached {value}, not {at_least}, in {timeout:.0f}s:\n{worker.log_tail()}")


async def wait_stalled(worker: Worker, name: str, at_least: float, timeout: float) -> float:
    """The value of a counter once it reached ``at_least`` and stayed put for a second."""
    end = time.monotonic() + timeout
    last = -1.0
    while time.monotonic() < end:
        worker.check()
        value = await metric(worker, name)
        if value >= at_least and value == last:
            return value
        last = value
        await asyncio.sleep(1.0)
    raise AssertionError(f"{name} still moving ({last}) after {timeout:.0f}s:\n{worker.log_tail()}")


async def sigterm(worker: Worker) -> tuple[float, int]:
    """SIGTERM; the seconds until the process is gone, and its exit code."""
    assert worker.proc is not None and worker.alive()
    began = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    while worker.proc.poll() is None and time.monotonic() - began < STOP_LIMIT_S + 10:
        await asyncio.sleep(0.05)
    took = time.monotonic() - began
    rc = worker.proc.poll()
    worker.stop(timeout=1.0)  # SIGKILL if it is still there; closes the log
    assert rc is not None, f"still running {took:.1f}s after SIGTERM:\n{worker.log_tail()}"
    return took, rc


def bounded_exit_logged(worker: Worker) -> bool:
    return "[shutdown] worker pid" in worker.log_path.read_text(errors="replace")


async def delivered(settings: Settings) -> tuple[int, int]:
    """(rows in the follower's Cassandra timeline, tweets in the PostgreSQL projection)."""
    def timeline_rows() -> int:
        cluster = cassandra_cluster(settings)
        try:
            row = cluster.connect().execute(
                f"SELECT count(*) FROM {settings.cassandra_keyspace}.user_timeline WHERE user_id = %s",
                (FOLLOWER,), timeout=30).one()
            return int(row[0])
        finally:
            cluster.shutdown()

    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, **settings.postgres_kwargs()) as conn:
        projected = (await (await conn.execute("SELECT count(*) FROM tweets")).fetchone())[0]
    return await asyncio.to_thread(timeline_rows), projected


async def test_sigterm_stops_the_worker_within_10s_in_every_state(tmp_path: Path) -> None:
    # The smallest session timeout the broker allows: should a worker that exits hard fail
    # to leave the group, the next one waits for its session to expire before it joins.
    # Timelines long enough for every tweet of an author: a follow then backfills all of
    # them and sets no floor, so the follower's Cassandra timeline holds every tweet.
    settings = isolated_settings(tmp_path, broker_session_timeout_s=6.0, timeline_cap=2000, backfill_limit=2000)
    provision(settings)
    timings: dict[str, float] = {}
    workers: list[Worker] = []
    t0 = time.monotonic()
    try:
        follows = [{"type": "followed", "follower_id": FOLLOWER, "followee_id": a, "at": CREATED_AT - 1}
                   for a in AUTHORS]
        await produce(settings, follows)
        await produce(settings, tweets(0, 100))

        # 1. Stores down while the agents retry.
        retrying = Worker(settings.replace(cassandra_port=free_port(),
                                           postgres_dsn=closed_port_dsn(settings.postgres_dsn)),
                          tmp_path / "retrying.log").start()
        workers.append(retrying)
        await wait_metric(retrying, "timeline_sink_retries_total", 2, timeout=60, what="postgres projection")
        timings["retrying from start"] = time.monotonic() - t0
        timings["retrying"], rc = await sigterm(retrying)
        assert timings["retrying"] < STOP_LIMIT_S, (timings, retrying.log_tail())
        assert rc == EXIT_CODE and bounded_exit_logged(retrying), (rc, retrying.log_tail())

        # 2. Redis down and a full stream buffer.
        await produce(settings, tweets(100, BUFFER_FILL))
        full = Worker(settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0"), tmp_path / "full.log").start()
        workers.append(full)
        # The fanout's stream buffer holds stream_buffer_maxsize (8,192) messages; then the
        # consumer stops taking any, well before the end of the log.
        received = await wait_stalled(full, "faust_messages_received_total", 8192, timeout=90)
        timings["full from start"] = time.monotonic() - t0
        assert received < len(follows) + 100 + BUFFER_FILL, f"not stalled: all {received} messages received"
        assert await metric(full, "timeline_store_retrying") >= 1, "the fanout's batch is not retrying"
        timings["full buffer"], rc = await sigterm(full)
        assert timings["full buffer"] < STOP_LIMIT_S, (timings, full.log_tail())
        assert rc == EXIT_CODE and bounded_exit_logged(full), (rc, full.log_tail())

        # 3. Working stores: everything is delivered, then an idle worker stops cleanly.
        worker = Worker(settings, tmp_path / "idle.log").start()
        workers.append(worker)
        began = time.monotonic()
        # ~9,000 tweets: up to minutes on a loaded 2-core machine
        # (this checks that nothing was lost, not how fast the catch-up is).
        await wait_caught_up(settings, timeout=420, check=worker.check)
        timings["catch-up"] = time.monotonic() - began
        assert await delivered(settings) == (100 + BUFFER_FILL,) * 2
        timings["idle"], rc = await sigterm(worker)
        assert timings["idle"] < STOP_LIMIT_S, (timings, worker.log_tail())
        assert rc == 0 and not bounded_exit_logged(worker), (rc, worker.log_tail())
    finally:
        for w in workers:
            w.stop(timeout=1.0)
        print("timings (s):", {k: round(v, 1) for k, v in timings.items()}, "total", round(time.monotonic() - t0, 1))
        drop(settings)
