"""Phase 3, ``fanout_throughput`` (and the report's ``write_savings`` and ``cpu_per_1000_deliveries``).

A calibration burst, then a burst sized to keep the worker busy for ``throughput_s``
seconds; deliveries are counted in Cassandra (``user_timeline`` rows per user, before
and after) and divided by the wall time from the first publish to zero consumer lag;
CPU of every process is read from /proc over the same window.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from aiokafka.errors import KafkaError

from bench.context import Publisher, RunContext, bar, log, open_reader
from bench.redis_stats import command_delta, command_stats
from bench.stage_times import diff as stage_diff
from bench.sysstats import CpuWindow
from sinks.cassandra import CassandraStore


async def count_rows(store: CassandraStore, user_ids: list[int]) -> dict[int, int]:
    name = "bench_count_user_tl"
    if name not in store._stmts:  # noqa: SLF001 - a bench-only statement on the store's session
        store._stmts[name] = await asyncio.to_thread(  # noqa: SLF001
            store.session.prepare, f"SELECT COUNT(*) AS n FROM {store.keyspace}.user_timeline WHERE user_id = ?")
    out: dict[int, int] = {}
    chunk = 2000
    for start in range(0, len(user_ids), chunk):
        part = user_ids[start:start + chunk]
        rows = await store.query_many(name, [(u,) for u in part])
        out.update((u, r[0].n if r else 0) for u, r in zip(part, rows))
    return out


async def run(ctx: RunContext) -> dict[str, Any]:
    g = ctx.graph
    cfg = ctx.cfg
    settings = ctx.settings
    cal = await ctx.burst(ctx.draw_tweets(cfg["calibrate_deliveries"]), "calibration")
    cal_rate = cal["expected_deliveries"] / cal["wall_s"]
    log(f"calibration: {cal['expected_deliveries']} deliveries in {cal['wall_s']:.1f} s = {cal_rate:.0f}/s")
    users = [i for i in range(g.n) if g.active[i]]
    inactive = [i for i in range(g.n) if not g.active[i]]
    users += random.Random(ctx.args.seed + 5).sample(inactive, min(cfg["inactive_sample"], len(inactive)))
    async with open_reader(settings) as reader:
        store = reader.cassandra
        before = await count_rows(store, [g.ids[i] for i in users])
        changelogs = await ctx.monitor.changelog_topics()
        offsets_before = await ctx.monitor.end_offsets(
            [settings.topic_tweets, settings.topic_deliveries, *changelogs])
        stages_before = await ctx.stage_snapshot()
        redis_before = await command_stats(reader.redis)
        window = CpuWindow(ctx.pids(), threads_of=ctx.worker.profiled.pid).start()
        run_ = await sustained(ctx, cfg["throughput_s"], cal_rate)
        cpu = window.stop()
        cpu["redis_commands"] = command_delta(redis_before, await command_stats(reader.redis))
        where = stage_diff(stages_before, await ctx.stage_snapshot())
        authors = run_["authors"]
        offsets_after = await ctx.monitor.end_offsets(
            [settings.topic_tweets, settings.topic_deliveries, *changelogs])
        after = await count_rows(store, [g.ids[i] for i in users])
    delivered = sum(after[g.ids[i]] - before[g.ids[i]] for i in users)
    to_inactive = sum(after[g.ids[i]] - before[g.ids[i]] for i in users if not g.active[i])
    rate = delivered / run_["wall_s"]
    ctx.capacity = rate
    msgs = {t: offsets_after[t] - offsets_before[t] for t in offsets_before}
    changelog_msgs = sum(v for t, v in msgs.items() if t.endswith("-changelog"))
    consumed = msgs[settings.topic_tweets] + msgs[settings.topic_deliveries]
    ctx.report["write_savings"] = savings(ctx, authors, delivered)
    ctx.report["cpu_per_1000_deliveries"] = cpu_per_delivery(cpu, delivered)
    return {
        "deliveries_per_s": round(rate, 1),
        "deliveries_counted_in_cassandra": delivered,
        "deliveries_expected_from_graph": run_["expected_deliveries"],
        "rows_written_to_inactive_sample": to_inactive,
        "tweets": len(authors),
        "tweets_per_s": round(len(authors) / run_["wall_s"], 1),
        "wall_s_first_publish_to_zero_lag": round(run_["wall_s"], 1),
        "feeding_s": round(run_["publish_s"], 1),
        "feeding": f"{run_['chunks']} chunks of ~2 s of work, published whenever fewer than "
                   f"{run_['low_water_msgs']} messages were queued (so the worker never ran dry), "
                   "then a drain to zero lag",
        "peak_consumer_lag_msgs": run_["peak_lag"],
        "end_resolution": "zero lag polled every 0.25 s; Faust commits offsets every 1 s, "
                          "so the wall time is up to ~1.2 s long (rate slightly understated)",
        "kafka_messages_consumed": consumed,
        "kafka_messages_consumed_per_s": round(consumed / run_["wall_s"], 1),
        "delivery_messages": msgs[settings.topic_deliveries],
        "table_changelog_messages": changelog_msgs,
        "changelog_messages_per_1000_deliveries": round(changelog_msgs / delivered * 1000, 1) if delivered else None,
        "calibration": {"deliveries": cal["expected_deliveries"], "wall_s": round(cal["wall_s"], 1),
                        "deliveries_per_s": round(cal_rate, 1)},
        "redis_pushes": "every active user's timeline is cached, so each delivery is a Cassandra row and a Redis push",
        "where_time_goes": where,
        "lag_samples": run_["lag_samples"][:: max(1, len(run_["lag_samples"]) // 60)],
    }


def cpu_per_delivery(cpu: dict[str, Any], delivered: int) -> dict[str, Any]:
    """The CPU window of the phase per delivery: the report's ``cpu_per_1000_deliveries``."""
    ours = sum(v for k, v in cpu["cpu_s"].items() if k != "bench (load generator)")
    per_delivery = ours / delivered if delivered else None
    nproc = os.cpu_count() or 1
    return {
        "window": "the fanout throughput phase (first publish to zero lag)",
        "deliveries": delivered,
        "pipeline_cpu_s_per_1000_deliveries": round(per_delivery * 1000, 3) if per_delivery else None,
        "machine_bound_deliveries_per_s": round(nproc / per_delivery) if per_delivery else None,
        "cores_needed_for_20000_per_s": round(20_000 * per_delivery, 1) if per_delivery else None,
        "estimate": "worker + Kafka + Cassandra + Redis + PostgreSQL CPU per delivery; machine_bound = all "
                    f"{nproc} cores busy with nothing but the pipeline, at this efficiency",
        "cpu_s_per_1000_deliveries": {k: round(v / delivered * 1000, 3) for k, v in cpu["cpu_s"].items()}
        if delivered else {},
        **cpu,
    }


async def sustained(ctx: RunContext, seconds: float, rate: float) -> dict[str, Any]:
    """Keep the pipeline saturated for ``seconds``: chunks of ~2 s of work are published whenever
    fewer than two chunks are queued (consumer lag), then wait for zero lag."""
    g = ctx.graph
    settings = ctx.settings
    chunk = max(1.0, rate * 2.0)
    low_water = max(20, 2 * int(chunk / max(1.0, g.expected_deliveries_per_tweet())))
    pub = await Publisher(settings, linger_ms=5).start()
    authors: list[int] = []
    feed_samples: list[tuple[float, int]] = []
    chunks = 0
    t0 = time.time()

    async def publish() -> None:
        nonlocal chunks
        batch = ctx.draw_tweets(chunk)
        futures = [await pub.send(ctx.factory.make(a)) for a in batch]
        await asyncio.gather(*futures)
        authors.extend(batch)
        chunks += 1

    try:
        for _ in range(3):
            await publish()
        with bar(desc="fanout throughput (sustained)", total=int(seconds), unit="s") as pb:
            while time.time() - t0 < seconds:
                ctx.check_worker()
                try:
                    lag = await ctx.monitor.lag()
                except KafkaError:
                    lag = {}
                queued = lag.get(settings.topic_tweets, 0) + lag.get(settings.topic_deliveries, 0)
                feed_samples.append((round(time.time() - t0, 1), sum(lag.values())))
                if queued < low_water:
                    await publish()
                pb.n = int(min(seconds, time.time() - t0))
                pb.set_postfix(queued=queued, chunks=chunks, refresh=False)
                pb.refresh()
                await asyncio.sleep(0.25)
        feeding_s = time.time() - t0
    finally:
        await pub.stop()
    done = await ctx.wait_zero(timeout=3600, desc="drain")
    return {"t0": t0, "zero_at": done.zero_at, "wall_s": done.zero_at - t0, "publish_s": feeding_s,
            "expected_deliveries": sum(g.deliveries_of(a) for a in authors), "peak_lag": done.peak_lag,
            "lag_samples": feed_samples + [(round(feeding_s + t, 1), n) for t, n in done.samples],
            "authors": authors, "chunks": chunks,
            "low_water_msgs": low_water}


def savings(ctx: RunContext, authors: list[int], delivered: int) -> dict[str, Any]:
    g = ctx.graph
    naive = sum(g.naive_of(a) for a in authors)
    push_all = sum(g.push_all_of(a) for a in authors)
    celeb = sum(1 for a in authors if g.celebrity[a])
    return {
        "window": "tweets of the fanout throughput phase",
        "tweets": len(authors),
        "celebrity_tweets": celeb,
        "rows_written": delivered,
        "naive_push_to_every_follower": naive,
        "push_without_activity_rule": push_all,
        "saved_by_skipping_inactive": round(1 - delivered / push_all, 3) if push_all else None,
        "saved_vs_naive (inactive + celebrity rules)": round(1 - delivered / naive, 3) if naive else None,
        "inactive_share_of_users": round(1 - sum(g.active) / g.n, 3),
        "note": "the saving equals the inactive share among the followers of the tweets' authors (weighted by "
                "tweets); the graph's heavy readers, who follow ~150 accounts each, are all active, so that "
                "share is below the 60% of users",
        "design_claim": "60% fewer writes at 60% inactive (section 11)",
    }
