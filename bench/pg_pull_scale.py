"""The pull model in PostgreSQL at real scale, against our HTTP cache hit in the same run.

    python -m bench.pg_pull_scale [--users 100000] [--min-followers 17] [--tweets 5000000]
                                  [--queries 300] [--read-json FILE]

The full benchmark's PostgreSQL baseline (``bench/phases/pg_pull_baseline.py``) runs on
the pipeline's 12,000-user graph, where a well-indexed join answers heavy readers in about
a millisecond: too small to say anything. This builds the world the pull model has to serve
at scale, in a PostgreSQL schema of its own (``ops/schema.sql``'s tables and indexes,
dropped at the end): the benchmark's power-law graph (``bench/graph.py``) at ``--users``
users (about 5.1M follows with the defaults), ``--tweets`` tweets by its authors over 30
days (COPY), then VACUUM ANALYZE. It times the newest-50 home timeline as a join and as a
LATERAL query, one prepared query at a time, for:

* ``heavy``: 200 users who follow ``--heavy-following`` accounts each (500 by default), half
  of them also every celebrity (what a cache exists for);
* ``typical``: 200 random users (about 50 followees each).

Our side is measured in the same run: ``bench.read_bench``'s HTTP cache hit at
concurrency 1 (its own world on the same servers; or ``--read-json`` of a run of it), and
the report gives PostgreSQL's p99 over it. Writes ``bench/results/pg-pull-scale-<ts>.json``
and ``.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.graph import GraphSpec, generate
from bench.phases.pg_pull_baseline import QUERIES, copy_synthetic_tweets, time_query
from ops.schema import apply_postgres, drop_namespace
from settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results"
GROUP_SIZE = 200


def reader_groups(g: Any, seed: int) -> dict[str, list[int]]:
    """Heavy readers (the graph's: each follows ``heavy_following`` authors, half of them
    also every celebrity) and typical ones (random users), as user ids."""
    rng = random.Random(seed)
    return {"heavy": [g.ids[i] for i in g.heavy_pure + g.heavy_hybrid],
            "typical": [g.ids[i] for i in rng.sample(range(g.n), GROUP_SIZE)]}


async def copy_follows(conn: Any, g: Any) -> int:
    rows = 0
    async with conn.cursor() as cur:
        async with cur.copy("COPY follows (follower_id, followee_id) FROM STDIN") as copy:
            for author, followers in enumerate(g.followers):
                a = g.ids[author]
                lines = [f"{g.ids[f]}\t{a}\n" for f in followers]
                rows += len(lines)
                await copy.write("".join(lines).encode())
    return rows


async def time_queries(conn: Any, groups: dict[str, list[int]], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for qname, sql in QUERIES.items():
        for group, users in groups.items():
            out[f"{qname}/{group}"] = q = await time_query(conn, sql, users, n)
            print(f"{qname}/{group}: p50 {q['latency']['p50']} ms p99 {q['latency']['p99']} ms", flush=True)
    return out


def http_hit(read_json: Path | None, requests: int) -> dict[str, Any]:
    """Our HTTP cache hit at concurrency 1: from a read_bench result, or a run of it now."""
    if read_json is None:
        read_json = Path(tempfile.mkdtemp(prefix="pg-pull-scale-")) / "read.json"
        subprocess.run([sys.executable, "-m", "bench.read_bench", "--requests", str(requests),
                        "--concurrency", "1", "--out", str(read_json)], check=True)
    result = json.loads(read_json.read_text())
    return {"source": str(read_json), "timestamp": result.get("timestamp"),
            "cache_hit": result["scenarios"]["cache_hit@c1"]["latency_ms"],
            "hybrid_10": result["scenarios"].get("hybrid_10@c1", {}).get("latency_ms")}


async def build_and_query(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    import psycopg

    threshold = min(10_000, args.users // 4)  # the design's 10,000 (smaller only for a trial run)
    # Heavy readers are drawn from read-only accounts (no followers, no tweets), 5% of the users.
    spec = GraphSpec(users=args.users, posters=args.users - args.users // 20, hybrid_readers=GROUP_SIZE * 2,
                     celebrities=20, celebrity_threshold=threshold, min_followers=args.min_followers,
                     exponent=2.5, max_ordinary_followers=threshold * 9 // 10 - 1,
                     heavy_readers=GROUP_SIZE, heavy_following=args.heavy_following)
    t0 = time.monotonic()
    g = generate(spec, args.seed)
    gen_s = time.monotonic() - t0
    groups = reader_groups(g, args.seed)
    fol = {uid: n for uid, n in zip(g.ids, map(len, g.following()))}
    await asyncio.to_thread(apply_postgres, settings)
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True,
                                                     **settings.postgres_kwargs()) as conn:
        t0 = time.monotonic()
        follows = await copy_follows(conn, g)
        follows_s = time.monotonic() - t0
        t0 = time.monotonic()
        await copy_synthetic_tweets(conn, g, args.tweets, seed=args.seed + 31, epoch_ms=settings.snowflake_epoch_ms)
        tweets_s = time.monotonic() - t0
        t0 = time.monotonic()
        await conn.execute("VACUUM ANALYZE tweets")
        await conn.execute("VACUUM ANALYZE follows")
        analyze_s = time.monotonic() - t0
        size = (await (await conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(i.inhrelid)) + pg_total_relation_size('follows'))"
            " FROM pg_inherits i WHERE i.inhparent = 'tweets'::regclass")).fetchone())[0]
        queries = await time_queries(conn, groups, args.queries)
    return {"graph": {k: v for k, v in g.describe().items() if k != "followers_of_accounts_with_followers"},
            "followers": g.describe()["followers_of_accounts_with_followers"],
            "follows_rows": follows, "tweets_rows": args.tweets, "size_with_indexes": size,
            "build_s": {"graph": round(gen_s, 1), "copy_follows": round(follows_s, 1),
                        "copy_tweets": round(tweets_s, 1), "vacuum_analyze": round(analyze_s, 1)},
            "readers": {k: {"users": len(v), "mean_following": round(sum(fol[u] for u in v) / len(v), 1)}
                        for k, v in groups.items()},
            "queries": queries}


def ratios(pg: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    hit_p99 = ours["cache_hit"]["p99"]
    return {name: round(q["latency"]["p99"] / hit_p99, 1) for name, q in pg["queries"].items()}


def render(r: dict[str, Any]) -> str:
    pg, ours = r["postgres"], r["ours"]
    lines = [f"# PostgreSQL pull model at scale vs our HTTP cache hit ({r['timestamp']})", "",
             f"Graph: {pg['graph']['users']:,} users, {pg['follows_rows']:,} follows (power law, exponent "
             f"{pg['followers']['power_law_exponent']}, followers median {pg['followers']['median']}, p99 "
             f"{pg['followers']['p99']}, max {pg['followers']['max']:,}), {pg['tweets_rows']:,} tweets over 30 days; "
             f"{pg['size_with_indexes']} with indexes (ops/schema.sql). Built in {pg['build_s']} s. "
             f"Loadavg at start {r['loadavg_at_start']}.", "",
             "Readers: " + "; ".join(f"{k}: {v['users']} users following {v['mean_following']} accounts on average"
                                     for k, v in pg["readers"].items()) + ".", "",
             "| query / readers | p50 ms | p99 ms | max ms | mean rows | PostgreSQL p99 / our HTTP hit p99 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, q in pg["queries"].items():
        lat = q["latency"]
        lines.append(f"| {name} | {lat['p50']} | {lat['p99']} | {lat['max']} | {q['mean_rows']} | "
                     f"{r['ratios'][name]}x |")
    hit = ours["cache_hit"]
    lines += ["", f"Our HTTP cache hit (bench.read_bench, concurrency 1, {ours['timestamp']}): p50 {hit['p50']} ms, "
                  f"p99 {hit['p99']} ms" + (f"; hybrid(10) p99 {ours['hybrid_10']['p99']} ms" if ours.get("hybrid_10")
                                             else "") + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_pull_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--min-followers", type=int, default=18, help="power-law minimum (18: ~5.1M follows)")
    parser.add_argument("--tweets", type=int, default=5_000_000)
    parser.add_argument("--heavy-following", type=int, default=500, help="accounts each heavy reader follows")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per query and reader group")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--read-json", type=Path, default=None, help="a bench.read_bench result to compare with")
    parser.add_argument("--read-requests", type=int, default=1500)
    args = parser.parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    settings = get_settings().isolated("pgscale", stamp.lower(), tempfile.mkdtemp(prefix="pg-pull-scale-"))
    loadavg = [round(x, 2) for x in os.getloadavg()]
    try:
        pg = asyncio.run(build_and_query(args, settings))
    finally:
        asyncio.run(drop_namespace(settings))
    ours = http_hit(args.read_json, args.read_requests)
    result = {"benchmark": "pg_pull_scale", "timestamp": stamp, "loadavg_at_start": loadavg,
              "args": vars(args) | {"read_json": str(args.read_json) if args.read_json else None},
              "postgres": pg, "ours": ours, "ratios": ratios(pg, ours)}
    out = RESULTS / f"pg-pull-scale-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
