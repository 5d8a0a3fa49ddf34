"""What a Cassandra node's CPU per row owes to how often writes arrive, and to its timer slack.

    python -m bench.cassandra_timer_slack [--slack-us 50,500] [--seconds 15] [--rounds 2]

Against the running node of ``./dev services`` (root: it sets the node's timer slack through
``/proc/<tid>/timerslack_ns``, as ``TL_SERVER_TIMER_SLACK_US`` does at its start, and puts the
node's own value back at the end), in a throw-away keyspace (dropped at the end). The same rows
per second (about 5,200, stage 2's rate at a quarter of the burst capacity) in three arrival
patterns: 13 UNLOGGED batches of 32 rows together every 80 ms (stage 2's chunks at steady
load), 130 every 800 ms (the same rows in fewer, larger bursts), one every 6 ms (a trickle).
Each (slack, pattern) reports the node's CPU per row and the latency of a send (all of its
batches acknowledged). Idle between bursts, the node's request threads spin in timed sleeps
of 10 us and up (``SEPWorker.doWaitSpin``); in this VM each is a timer: the slack lets the
kernel fold them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from cassandra.cluster import Cluster
from cassandra.query import BatchStatement, BatchType

from bench.sysstats import pid_listening_on, proc_cpu
from localenv.host import timer_slack_ns
from settings import get_settings

PATTERNS = (("13 x 32 rows every 80 ms", 13, 0.08), ("130 x 32 rows every 800 ms", 130, 0.8),
            ("1 x 32 rows every 6 ms", 1, 0.006))
ROWS_PER_BATCH = 32


def set_slack(pid: int, slack_ns: int) -> None:
    """Every thread of ``pid`` (new threads inherit their creator's value)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{tid}/timerslack_ns", "w") as fh:
                fh.write(str(slack_ns))
        except OSError:  # a thread that just ended
            pass


def run_pattern(session, insert, pid: int, batches: int, period_s: float, seconds: float, seq: list[int]) -> dict:
    cpu0, began, rows, sends = proc_cpu(pid), time.monotonic(), 0, []
    while time.monotonic() - began < seconds:
        start = time.monotonic()
        futures = []
        for _ in range(batches):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for _ in range(ROWS_PER_BATCH):
                seq[0] += 1
                batch.add(insert, (seq[0] % 100_000, seq[0], 7))
            futures.append(session.execute_async(batch))
        for f in futures:
            f.result()
        sends.append(time.monotonic() - start)
        rows += batches * ROWS_PER_BATCH
        time.sleep(max(0.0, period_s - (time.monotonic() - start)))
    wall = time.monotonic() - began
    cpu = proc_cpu(pid) - cpu0
    sends.sort()
    return {"rows": rows, "wall_s": round(wall, 2), "cores": round(cpu / wall, 3),
            "us_per_row": round(1e6 * cpu / rows, 1), "send_p50_ms": round(1000 * statistics.median(sends), 2),
            "send_p99_ms": round(1000 * sends[int(len(sends) * 0.99)], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slack-us", default="50,500", help="comma-separated timer slacks to compare")
    parser.add_argument("--seconds", type=float, default=15.0, help="per (slack, pattern)")
    parser.add_argument("--rounds", type=int, default=2, help="every slack this many times, alternating")
    args = parser.parse_args()
    settings = get_settings()
    host, port = settings.cassandra_hosts[0], settings.cassandra_port
    pid = pid_listening_on(port)
    if pid is None:
        raise SystemExit(f"no Cassandra listening on {port}: ./dev services up")
    own = timer_slack_ns(pid)
    if own is None:
        raise SystemExit(f"cannot read the timer slack of Cassandra's pid {pid} (root?)")
    keyspace = f"bench_slack_{uuid.uuid4().hex[:8]}"
    cluster = Cluster([host], port=port)
    session = cluster.connect()
    session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', "
                    "'replication_factor': 1}")
    session.execute(f"CREATE TABLE {keyspace}.t (u bigint, t bigint, a bigint, PRIMARY KEY (u, t)) "
                    "WITH CLUSTERING ORDER BY (t DESC)")
    insert = session.prepare(f"INSERT INTO {keyspace}.t (u, t, a) VALUES (?, ?, ?)")
    seq = [time.time_ns()]
    print(f"Cassandra pid {pid}, its timer slack {own // 1000} us; {args.seconds:.0f} s per cell")
    print("| round | slack us | pattern | rows | node cores | node us/row | send p50 ms | send p99 ms |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    try:
        for r in range(1, args.rounds + 1):
            for slack in (int(s) for s in args.slack_us.split(",")):
                set_slack(pid, slack * 1000)
                for name, batches, period in PATTERNS:
                    m = run_pattern(session, insert, pid, batches, period, args.seconds, seq)
                    print(f"| {r} | {slack} | {name} | {m['rows']:,} | {m['cores']} | {m['us_per_row']} | "
                          f"{m['send_p50_ms']} | {m['send_p99_ms']} |", flush=True)
    finally:
        set_slack(pid, own)
        session.execute(f"DROP KEYSPACE {keyspace}")
        cluster.shutdown()


if __name__ == "__main__":
    main()
