"""What the first-post-wins claim costs: PostgreSQL's batched claim vs the Cassandra LWT it replaced.

    python -m bench.claim_cost [--n 2000] [--batch 100] [--concurrency 32] [--runs 3]

In a throw-away namespace (``Settings.isolated("bench", ...)``: a keyspace and a PostgreSQL
schema, dropped at the end), per run, N new tweets each time:

* ``batched insert``: N plain ``insert_tweet`` through ``CassandraStore.execute_many``
  (UNLOGGED batches: the winners' bodies, what stage 1 writes after its claim);
* ``LWT claim (new)``: N ``INSERT ... IF NOT EXISTS`` (the claim of workers before
  2026-12-03), ``--concurrency`` in flight;
* ``PG claim (new)`` / ``PG claim (replay)``: ``TweetClaims.claim`` of N new ids, then the
  same again, ``--batch`` ids per call (stage 1's batches);
* ``read rows``: ``read_tweets`` of N ids (IN queries of 100 ids), the Cassandra read stage 1
  makes alongside its claim.

Each phase reports wall seconds and the server CPU it cost: Cassandra's process, or every
PostgreSQL process (the postmaster and its backends), and this client's CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid

from cassandra.concurrent import execute_concurrent
from psycopg.conninfo import conninfo_to_dict

from bench.sysstats import descendants, pid_listening_on, proc_cpu
from ops.schema import apply_cassandra, apply_postgres, drop_namespace, run_sync
from settings import get_settings
from sinks.cassandra import CassandraStore
from sinks.postgres import TweetClaims

LWT = "INSERT INTO {ks}.tweets (tweet_id, author_id, text, created_at) VALUES (?, ?, ?, ?) IF NOT EXISTS"


class Phase:
    """Wall time, server CPU seconds (a process and its descendants) and client CPU of one phase."""

    def __init__(self, out: dict[str, tuple[float, float, float]], name: str, server_pid: int | None) -> None:
        self.out, self.name, self.pid = out, name, server_pid

    def server_cpu(self) -> float:
        return sum(proc_cpu(p) for p in descendants(self.pid)) if self.pid else float("nan")

    def __enter__(self) -> "Phase":
        self.cpu, self.client = self.server_cpu(), time.process_time()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.out[self.name] = (time.perf_counter() - self.started, self.server_cpu() - self.cpu,
                               time.process_time() - self.client)


async def measure(store: CassandraStore, claims: TweetClaims, n: int, batch: int, concurrency: int, base: int,
                  cassandra_pid: int | None, postgres_pid: int | None) -> dict[str, tuple[float, float, float]]:
    def rows(offset: int) -> list[tuple[int, int, str, int]]:
        return [(base + offset + i, 1000 + i % 97, f"tweet number {i} " + "x" * 60, 1_700_000_000_000 + i)
                for i in range(n)]

    out: dict[str, tuple[float, float, float]] = {}
    with Phase(out, "batched insert", cassandra_pid):
        await store.execute_many([("insert_tweet", r) for r in rows(0)])
    lwt = store.session.prepare(LWT.format(ks=store.keyspace))
    with Phase(out, "LWT claim (new)", cassandra_pid):
        results = await asyncio.to_thread(execute_concurrent, store.session, [(lwt, r) for r in rows(n)],
                                          concurrency=concurrency, raise_on_first_error=True)
    assert all(ok for ok, _ in results)
    posts = rows(2 * n)
    for phase in ("PG claim (new)", "PG claim (replay)"):
        with Phase(out, phase, postgres_pid):
            for i in range(0, n, batch):
                got = await claims.claim(posts[i:i + batch])
                assert len(got) == len(posts[i:i + batch])
    with Phase(out, "read rows", cassandra_pid):
        found = await store.read_tweets([r[0] for r in rows(0)])
    assert len(found) == n
    return out


async def main(n: int, batch: int, concurrency: int, runs: int) -> None:
    settings = get_settings().isolated("bench", uuid.uuid4().hex[:10], tempfile.mkdtemp())
    apply_cassandra(settings)
    apply_postgres(settings)
    store = await asyncio.to_thread(CassandraStore.open, settings)
    claims = TweetClaims(settings)
    # None if not ours to read (then CPU is nan)
    pg_port = int(conninfo_to_dict(settings.postgres_dsn).get("port") or 5432)
    cassandra_pid, postgres_pid = pid_listening_on(settings.cassandra_port), pid_listening_on(pg_port)
    try:
        results = [await measure(store, claims, n, batch, concurrency, 10_000_000 * (run + 1),
                                 cassandra_pid, postgres_pid) for run in range(runs)]
    finally:
        await claims.close()
        await asyncio.to_thread(store.close)
        run_sync(drop_namespace(settings))
    print(f"N={n}, PG claims of {batch}, LWT concurrency {concurrency}, {runs} runs: wall seconds per run;"
          f" rows/s of the best run; server and client CPU ms per 1,000 rows (median run);"
          f" load average {os.getloadavg()}")
    for name in results[0]:
        times = [r[name][0] for r in results]
        server = sorted(r[name][1] for r in results)[len(results) // 2]
        client = sorted(r[name][2] for r in results)[len(results) // 2]
        best = min(times)
        print(f"  {name:20s} {' '.join(f'{t:6.3f}' for t in times)}   best {best:6.3f} s = {n / best:6.0f}/s"
              f"   server CPU {server * 1e6 / n:6.0f}   client CPU {client * 1e6 / n:6.0f} ms/1000")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.batch, args.concurrency, args.runs))
