"""Phase 7, ``pg_pull_baseline``: the pull model in PostgreSQL alone, on the same graph.

The projection's tweets plus synthetic ones COPYed up to ``pg_tweets`` rows; join and
LATERAL queries for the same reader groups as phase 5, and our reads under the same
conditions (in-process, one at a time, the worker stopped).
"""
from __future__ import annotations

import random
import statistics
import time
from datetime import datetime, timezone
from typing import Any

from bench.context import RunContext, bar, open_reader, timed_page
from bench.latency import latency_summary

QUERIES = {
    "join": (
        "SELECT t.tweet_id, t.author_id, t.text, t.created_at FROM tweets t"
        " JOIN follows f ON f.followee_id = t.author_id"
        " WHERE f.follower_id = %s AND t.deleted_at IS NULL"
        " ORDER BY t.tweet_id DESC LIMIT 50"),
    "lateral": (
        "SELECT x.tweet_id, x.author_id, x.text, x.created_at FROM follows f"
        " CROSS JOIN LATERAL (SELECT t.tweet_id, t.author_id, t.text, t.created_at FROM tweets t"
        "   WHERE t.author_id = f.followee_id AND t.deleted_at IS NULL"
        "   ORDER BY t.tweet_id DESC LIMIT 50) x"
        " WHERE f.follower_id = %s ORDER BY x.tweet_id DESC LIMIT 50"),
}


async def run(ctx: RunContext) -> dict[str, Any]:
    import psycopg

    g = ctx.graph
    settings = ctx.settings
    target = ctx.cfg["pg_tweets"]
    readers = ctx.readers or {
        "hit": [g.ids[i] for i in g.heavy_pure], "hybrid": [g.ids[i] for i in g.heavy_hybrid],
        "typical": [g.ids[i] for i in range(g.n) if g.pure[i] and g.active[i]][:100]}
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True,
                                                     **settings.postgres_kwargs()) as conn:
        projected = (await (await conn.execute("SELECT count(*) FROM tweets")).fetchone())[0]
        follows = (await (await conn.execute("SELECT count(*) FROM follows")).fetchone())[0]
        add = max(0, target - projected)
        t0 = time.monotonic()
        await copy_tweets(ctx, conn, add)
        copy_s = time.monotonic() - t0
        t0 = time.monotonic()
        await conn.execute("VACUUM ANALYZE tweets")
        await conn.execute("VACUUM ANALYZE follows")
        analyze_s = time.monotonic() - t0
        total = (await (await conn.execute("SELECT count(*) FROM tweets")).fetchone())[0]
        out: dict[str, Any] = {}
        plans: dict[str, str] = {}
        n = ctx.cfg["pg_queries"]
        for qname, sql in QUERIES.items():
            for group, users in readers.items():
                if users:
                    out[f"{qname}/{group}"] = await time_query(conn, sql, users, n)
            for group in ("hit", "typical"):
                if readers.get(group):
                    cur = await conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, (readers[group][0],))
                    plans[f"{qname}/{group}"] = compact_plan([r[0] for r in await cur.fetchall()])
        sizes = await (await conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(i.inhrelid))), count(*),"
            " pg_size_pretty(pg_total_relation_size('follows'))"
            " FROM pg_inherits i WHERE i.inhparent = 'tweets'::regclass")).fetchone()
    ours = await quiet_reads(ctx, readers, n)
    fol = g.following()
    idx = {uid: i for i, uid in enumerate(g.ids)}

    def mean_following(users: list[int]) -> float:
        return round(statistics.fmean(len(fol[idx[u]]) for u in users), 1) if users else 0.0

    return {
        "tweets_rows": total,
        "tweets_from_pipeline_projection": projected,
        "tweets_copied": add,
        "copy_s": round(copy_s, 1),
        "vacuum_analyze_s": round(analyze_s, 1),
        "follows_rows": follows,
        "table_sizes": {"tweets (all partitions, with indexes)": sizes[0], "follows": sizes[2]},
        "tweets_partitions": sizes[1],
        "indexes": "ops/schema.sql as is: tweets range-partitioned by month on the Snowflake id, PK (tweet_id), "
                   "(author_id, tweet_id DESC); follows PK (follower_id, followee_id), (followee_id, follower_id)",
        "readers": {k: {"users": len(v), "mean_following": mean_following(v)} for k, v in readers.items()},
        "reader_groups": "hit: heavy readers following ~150 accounts and no celebrity; hybrid: heavy readers "
                         "following ~150 accounts and every celebrity; typical: random active users of the graph",
        "how": "psycopg in this process, prepared, one query at a time (no HTTP); the worker is stopped",
        "queries": out,
        "ours_in_process_same_conditions": ours,
        "plans": plans,
    }


async def time_query(conn: Any, sql: str, users: list[int], n: int) -> dict[str, Any]:
    """``n`` runs of ``sql`` for ``users`` in turn, prepared, one at a time, after 20 warm-up runs
    (buffers and the prepared statement): latency, queries/s and mean rows."""
    for u in users[:20]:
        await (await conn.execute(sql, (u,), prepare=True)).fetchall()
    times, rows = [], []
    began = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        cur = await conn.execute(sql, (users[i % len(users)],), prepare=True)
        rows.append(len(await cur.fetchall()))
        times.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - began
    return {"latency": latency_summary(times), "queries_per_s": round(n / elapsed, 1),
            "mean_rows": round(statistics.fmean(rows), 1)}


async def quiet_reads(ctx: RunContext, readers: dict[str, list[int]], n: int) -> dict[str, Any]:
    """Our reads under the PostgreSQL baseline's conditions: in-process, one at a time, worker stopped."""
    out: dict[str, Any] = {}
    async with open_reader(ctx.settings) as reader:
        hit = readers.get("hit") or []
        cases = {"cache_hit": (hit[0::2], False), "cache_miss": (hit[1::2] or hit, True),
                 "hybrid": (readers.get("hybrid") or [], False),
                 "typical_hit": (readers.get("typical") or [], False)}
        for name, (users, drop) in cases.items():
            if not users:
                continue
            for u in users:  # warm: caches filled, statements prepared
                await timed_page(reader, u)
            times, sources = [], {}
            for i in range(n):
                took, page = await timed_page(reader, users[i % len(users)], drop)
                times.append(took)
                sources[page.source] = sources.get(page.source, 0) + 1
            out[name] = {"latency": latency_summary(times), "sources": sources, "readers": len(users)}
    return out


async def copy_tweets(ctx: RunContext, conn: Any, count: int) -> None:
    """COPY ``count`` synthetic tweets (authors with the workload's mix) spread over the last 30 days."""
    await copy_synthetic_tweets(conn, ctx.graph, count, seed=ctx.args.seed + 31,
                                epoch_ms=ctx.settings.snowflake_epoch_ms)


async def copy_synthetic_tweets(conn: Any, g: Any, count: int, *, seed: int, epoch_ms: int) -> None:
    """COPY ``count`` tweets by ``g``'s authors (drawn with its authorship mix) with Snowflake
    ids over the last 30 days, into the ``tweets`` table of ``conn``'s search path."""
    if count <= 0:
        return
    rng = random.Random(seed)
    now = int(time.time() * 1000) - 60_000
    span = 30 * 86_400_000
    start = now - span
    step = span / count
    chunk = 50_000
    with bar(desc="COPY tweets", total=count, unit="row") as pb:
        async with conn.cursor() as cur:
            async with cur.copy("COPY tweets (tweet_id, author_id, text, created_at) FROM STDIN") as copy:
                for base in range(0, count, chunk):
                    n = min(chunk, count - base)
                    authors = g.authors(n, rng)
                    lines = []
                    for j, a in enumerate(authors):
                        i = base + j
                        ms = int(start + i * step)
                        tid = ((ms - epoch_ms) << 22) | (902 << 12) | (i & 0xFFF)
                        ts = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()
                        lines.append(f"{tid}\t{g.ids[a]}\tsynthetic tweet {i} by {g.ids[a]} lorem ipsum dolor\t{ts}\n")
                    await copy.write("".join(lines).encode())
                    pb.update(n)


def compact_plan(lines: list[str]) -> str:
    """An EXPLAIN ANALYZE text without the scans of partitions that returned no rows (72 monthly ones)."""
    out: list[str] = []
    skipped = 0
    skip_indent: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if indent > skip_indent and not line.lstrip().startswith("->"):
                continue
            if indent > skip_indent + 4:
                continue
            skip_indent = None
        if "->" in line and " on tweets_" in line and ("rows=0 " in line or "never executed" in line):
            skipped += 1
            skip_indent = indent
            continue
        out.append(line)
    if skipped:
        out.append(f"({skipped} scans of tweets partitions that returned no rows left out)")
    return "\n".join(out)
