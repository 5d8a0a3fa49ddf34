"""What the first-post-wins claim costs: LWT inserts vs the batched plain inserts they replace.

    python -m bench.lwt_cost [--n 2000] [--concurrency 32] [--runs 3]

In a throw-away keyspace (``Settings.isolated("bench", ...)``, dropped at the end), per run:

* ``batched insert``: N plain ``insert_tweet`` through ``CassandraStore.execute_many``
  (UNLOGGED batches, what stage 1 did before);
* ``LWT claim (new)``: ``claim_tweets`` of N new ids (``INSERT ... IF NOT EXISTS``,
  ``--concurrency`` in flight);
* ``LWT claim (replay)``: the same N again (every claim not applied, rows returned);
* ``read rows (projection)``: ``read_tweets`` of the N ids (IN queries of 100 ids), what
  the PostgreSQL projection adds per batch.

Measured on the dev single-node Cassandra 5.0.9 (``paxos_variant: v1``), 2 cores shared
with Kafka, Redis, PostgreSQL and other people's tests (load average 4-10, so very noisy),
N=2000, concurrency 32, four runs of three (wall s; Cassandra CPU per 1,000 rows):

    batched insert          0.34-1.03 s   75-100 ms
    LWT claim (new)         1.57-9.31 s   1,015-1,375 ms
    LWT claim (replay)      2.00-10.2 s   970-1,935 ms
    read rows (projection)  0.08-0.65 s   40-90 ms

Concurrency 8 / 64 / 128: LWT claims 2.6-9.1 / 2.2-2.8 / 3.2-4.2 s, ~1 s CPU per 1,000
each time: the server's CPU is the limit, not the number in flight.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid

from bench.sysstats import pid_listening_on, proc_cpu
from ops.schema import apply_cassandra, drop_namespace, run_sync
from settings import get_settings
from sinks.cassandra import CassandraStore


class Phase:
    """Wall time and the Cassandra server's CPU seconds of one phase."""

    def __init__(self, out: dict[str, tuple[float, float]], name: str, server_pid: int | None) -> None:
        self.out, self.name, self.pid = out, name, server_pid

    def __enter__(self) -> "Phase":
        self.cpu = proc_cpu(self.pid) if self.pid else 0.0
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu = (proc_cpu(self.pid) - self.cpu) if self.pid else float("nan")
        self.out[self.name] = (time.perf_counter() - self.started, cpu)


async def measure(store: CassandraStore, n: int, base: int, pid: int | None) -> dict[str, tuple[float, float]]:
    rows = [(base + i, 1000 + i % 97, f"tweet number {i} " + "x" * 60, 1_700_000_000_000 + i) for i in range(n)]
    out: dict[str, tuple[float, float]] = {}
    with Phase(out, "batched insert", pid):
        await store.execute_many([("insert_tweet", r) for r in rows])
    claims = [(r[0] + n, *r[1:]) for r in rows]  # other ids: new rows
    with Phase(out, "LWT claim (new)", pid):
        got = await store.claim_tweets(claims)
    assert all(s.author_id == c[1] for s, c in zip(got, claims))
    with Phase(out, "LWT claim (replay)", pid):
        await store.claim_tweets(claims)
    with Phase(out, "read rows (projection)", pid):
        found = await store.read_tweets([c[0] for c in claims])
    assert len(found) == n
    return out


async def main(n: int, concurrency: int, runs: int) -> None:
    settings = get_settings().isolated("bench", uuid.uuid4().hex[:10], tempfile.mkdtemp())
    apply_cassandra(settings)
    store = await asyncio.to_thread(CassandraStore.open, settings)
    store.lwt_concurrency = concurrency
    pid = pid_listening_on(settings.cassandra_port)  # None if not ours to read (then CPU is nan)
    try:
        results = [await measure(store, n, 10_000_000 * (run + 1), pid) for run in range(runs)]
    finally:
        await asyncio.to_thread(store.close)
        run_sync(drop_namespace(settings, postgres_schema=False))
    print(f"N={n}, LWT concurrency {concurrency}, {runs} runs: wall seconds per run; rows/s of the best run;"
          f" Cassandra server CPU ms per 1,000 rows (median run); load average {os.getloadavg()}")
    for name in results[0]:
        times = [r[name][0] for r in results]
        cpus = sorted(r[name][1] for r in results)
        best = min(times)
        print(f"  {name:24s} {' '.join(f'{t:6.3f}' for t in times)}   best {best:6.3f} s = {n / best:6.0f}/s"
              f"   server CPU {cpus[len(cpus) // 2] * 1e6 / n:6.0f} ms/1000")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.concurrency, args.runs))
