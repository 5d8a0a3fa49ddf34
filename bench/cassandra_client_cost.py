"""The worker's own CPU per timeline row written to Cassandra: batches bound by the driver
against batches of packed values (``sinks/cassandra_values.py``), in the same run.

    python -m bench.cassandra_client_cost [--rows 61440] [--call 1024] [--rounds 4] [--out FILE]

In a throw-away keyspace, per round and per variant (alternating, so both see the same
machine): ``--rows`` ``insert_user_tl`` rows in ``execute_many`` calls of ``--call`` rows
(stage 2's chunk size), random users; this process's CPU (all threads: planning, binding,
the driver's encoding and I/O thread) and the Cassandra server's, per row. ``bind``: every
statement through ``BatchStatement.add`` (the store without packers); ``packed``: the store as
it runs. The ratio packed/bind of the client CPU is the figure; the server's CPU should not move.
The garbage collector is tuned as in the worker (``gc_tuning.tune_gc``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.sysstats import pid_listening_on, proc_cpu
from gc_tuning import tune_gc
from ops.schema import apply_cassandra, drop_namespace, run_sync
from settings import get_settings
from sinks.cassandra import CassandraStore


def calls(rnd: random.Random, rows: int, size: int, first_id: int) -> list[list[tuple[str, tuple]]]:
    out, tweet = [], first_id
    for start in range(0, rows, size):
        call = []
        for _ in range(min(size, rows - start)):
            tweet += 1
            call.append(("insert_user_tl", (rnd.randrange(1, 200_000), tweet, rnd.randrange(1, 5_000))))
        out.append(call)
    return out


def measure(store: CassandraStore, work: list[list[tuple[str, tuple]]], server: int | None) -> dict[str, float]:
    rows = sum(map(len, work))
    s0, c0, t0 = proc_cpu(server) if server else 0.0, time.process_time(), time.perf_counter()
    for call in work:
        store._execute_many(call)
    c1, t1 = time.process_time(), time.perf_counter()
    s1 = proc_cpu(server) if server else float("nan")
    return {"client_us_per_row": 1e6 * (c1 - c0) / rows, "server_us_per_row": 1e6 * (s1 - s0) / rows,
            "rows_per_s": rows / (t1 - t0)}


def main(rows: int, size: int, rounds: int, out: Path | None) -> dict:
    settings = get_settings().isolated("bench", uuid.uuid4().hex[:10], tempfile.mkdtemp())
    apply_cassandra(settings)
    store = CassandraStore.open(settings)
    store.gate = None  # the commit-log gate's bookkeeping is not what is measured
    tune_gc()  # the collector as the worker runs it
    packers = dict(store._packers)
    server = pid_listening_on(settings.cassandra_port)
    rnd = random.Random(1)
    results: dict[str, list[dict[str, float]]] = {"bind": [], "packed": []}
    try:
        store._execute_many(calls(rnd, 10_000, size, 1)[0])  # warm up the statements and the server
        for r in range(rounds):
            for variant in (("bind", "packed") if r % 2 == 0 else ("packed", "bind")):
                store._packers = packers if variant == "packed" else {}
                work = calls(rnd, rows, size, 10**12 + (2 * r + (variant == "packed")) * 10**8)
                results[variant].append(measure(store, work, server))
    finally:
        store._packers = packers
        store.close()
        run_sync(drop_namespace(settings, postgres_schema=False))

    def median(variant: str, key: str) -> float:
        return statistics.median(x[key] for x in results[variant])

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows_per_round": rows, "rows_per_call": size, "rounds": rounds, "load_average": os.getloadavg(),
        "runs": results,
        "median": {v: {k: round(median(v, k), 2) for k in results[v][0]} for v in results},
        "client_cpu_ratio_packed_to_bind": round(median("packed", "client_us_per_row")
                                                 / median("bind", "client_us_per_row"), 3),
        "client_cpu_ratio_per_round": [round(p["client_us_per_row"] / b["client_us_per_row"], 3)
                                       for p, b in zip(results["packed"], results["bind"])],
    }
    print(json.dumps(report, indent=1))
    if out is not None:
        out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=61_440)
    parser.add_argument("--call", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    main(args.rows, args.call, args.rounds, args.out)
