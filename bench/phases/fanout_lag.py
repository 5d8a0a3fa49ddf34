"""Phase 4, ``fanout_lag``: tweet accepted by Kafka -> visible in a follower's cached timeline.

Tweets at steady rates (nearly idle, then shares of the capacity phase 3 measured); for
each tweet, sampled followers' cached ``home:<id>`` sets are polled (ZSCORE, every 2 ms at
the idle rate, 10 ms at the others) until the tweet is there; lag = seen - Kafka ack, by author
size. A sample is late by up to one poll interval: 10 ms against an idle lag of ~30-40 ms (whose
goal is 30) was a bias of ~5 ms on average, so the idle rate polls every 2 ms (a few ZSCOREs per
poll); at the load points (lags of hundreds of ms) 10 ms keeps the poller's CPU low. The
checks of one poll go to Redis as one Lua script call (``Presence``), which costs this
process a fifth of the CPU of pipelined ZSCOREs.
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bench.cassandra_log import node_background_work
from bench.context import Publisher, RunContext, bar, paced
from bench.graph import sample_followers
from bench.latency import latency_summary
from bench.redis_stats import command_delta, command_stats
from bench.stage_times import diff as stage_diff
from bench.sysstats import CpuWindow
from sinks.redis_timeline import member, timeline_key

IDLE_RATE = 2.0  # tweets/s of the nearly idle point
# ``TL_BENCH_PROFILE_LOAD=0.5``: the worker's main thread under pyinstrument (and its threads'
# CPU sampler) during the load point at that share, as the ``profile`` phase does in a burst:
# where a steady feed spends the worker's time (costs per user, not per batch). The profiler
# slows the worker, so that point's lag is not comparable with a run without it.
PROFILE_LOAD = os.environ.get("TL_BENCH_PROFILE_LOAD", "")


async def run(ctx: RunContext) -> dict[str, Any]:
    g = ctx.graph
    cfg = ctx.cfg
    capacity = ctx.capacity or 1000.0
    mean_d = g.expected_deliveries_per_tweet()
    runs = []
    floor = await probe_stream(ctx, IDLE_RATE, cfg["lag_floor_s"], "fanout lag, 2 tweets/s")
    floor["load"] = "2 tweets/s (nearly idle)"
    runs.append(floor)
    for share in cfg["lag_loads"]:
        rate = max(1.0, share * capacity / mean_d)
        profiled = PROFILE_LOAD != "" and abs(float(PROFILE_LOAD) - share) < 1e-9
        if profiled:
            ctx.worker.profile_start()
        one = await probe_stream(ctx, rate, cfg["lag_s"], f"fanout lag, {share:.0%} of capacity")
        if profiled:
            one["profiled"] = await save_profile(ctx, share)
        one["load"] = f"{share:.0%} of the burst capacity"
        one["share"] = share
        runs.append(one)
        # Let a backlog drain before the next rate.
        await ctx.wait_zero(timeout=900, desc="drain")
    log = ctx.cassandra_log()
    for one in runs:  # read after the drains: a compaction is logged when it ends
        one["cassandra_background"] = node_background_work(log, one["began_at"], one["ended_at"])
    return {
        "rate_basis": f"shares of the fanout capacity measured in the burst ({capacity:.0f} deliveries/s) "
                      f"at {mean_d:.1f} deliveries per tweet; tweets one by one (acks=all, linger 0), "
                      "authors drawn with the workload's mix",
        "probe": "ZSCORE of the tweet's member in sampled active followers' cached home:<id> (all active "
                 "users' timelines are cached), polled every 2 ms at the idle rate and every 10 ms at the "
                 "others, one Lua call per ~1,000 checks (longer when many probes are pending: "
                 "at most ~10,000 ZSCORE/s); one sample per (tweet, follower); lag from the Kafka ack",
        "runs": runs,
    }


async def save_profile(ctx: RunContext, share: float) -> str:
    """Stop the worker's profiler and copy its text report and thread sampler beside the run's report."""
    if not await asyncio.to_thread(ctx.worker.profile_stop):
        raise RuntimeError("the profiler did not write its report")
    prefix = Path(str(ctx.worker.prefix))
    out = ctx.out_dir / f"run-{ctx.stamp}.profile-{share * 100:.0f}pct.txt"
    shutil.copyfile(prefix.with_suffix(".txt"), out)
    threads = prefix.with_suffix(".threads.json")
    if threads.exists():
        shutil.copyfile(threads, out.with_suffix(".threads.json"))
    return str(out)


async def probe_stream(ctx: RunContext, rate: float, duration: float, desc: str) -> dict[str, Any]:
    """Tweets at ``rate``/s for ``duration`` s (natural author mix); each is probed in sampled
    followers' cached timelines until seen. Returns samples (class, lag from ack, from created_at)."""
    g = ctx.graph
    settings = ctx.settings
    probes_per_class = {"small (<100 followers)": 2, "medium (100-999)": 3}
    samples: list[tuple[str, float, float]] = []
    sent_at: list[tuple[float, float]] = []  # (s since the run began, lag) per sample
    run_began = time.time()
    pending: list[dict] = []
    timeouts: dict[str, int] = {}
    redis = Redis.from_url(settings.redis_url)
    pub = await Publisher(settings).start()
    stop = asyncio.Event()
    rng = random.Random(ctx.args.seed + 11 + int(rate * 1000))
    threshold = settings.celebrity_threshold

    polls = [0, 0.0]  # ZSCOREs sent, the largest interval used
    resolution = 0.002 if rate <= IDLE_RATE else 0.01  # see the module doc

    present = Presence(redis)

    async def poll() -> None:
        # At most ~10,000 ZSCOREs a second: when the pipeline falls behind and probes pile up,
        # the poller must not take the CPU the pipeline needs (resolution degrades instead).
        while not stop.is_set() or pending:
            interval = max(resolution, len(pending) / 10_000)
            polls[1] = max(polls[1], interval)
            if pending:
                polls[0] += len(pending)
                batch = list(pending)
                seen = await present.check([(p["key"], p["member"]) for p in batch])
                now = time.time()
                done = set()
                for i, p in enumerate(batch):
                    if i in seen:
                        ack = p["ack"][0] if p["ack"][0] is not None else p["sent"]
                        samples.append((p["cls"], max(0.0, now - ack), max(0.0, now - p["created"] / 1000)))
                        sent_at.append((p["sent"] - run_began, now - ack))
                        done.add(id(p))
                    elif now - p["sent"] > 60:
                        timeouts[p["cls"]] = timeouts.get(p["cls"], 0) + 1
                        done.add(id(p))
                if done:  # probes added while the check was out stay
                    pending[:] = [p for p in pending if id(p) not in done]
            await asyncio.sleep(interval)

    async def one(i: int) -> None:
        a = g.authors(1, rng)[0]
        ev = ctx.factory.make(a)
        cls = g.size_class(a, threshold)
        ack: list[float | None] = [None]
        sent = time.time()
        await pub.send(ev, on_ack=lambda t: ack.__setitem__(0, t))
        if g.celebrity[a]:
            return
        for f in sample_followers(g, a, probes_per_class.get(cls, 8), rng):
            pending.append({"key": timeline_key(settings.redis_prefix, g.ids[f]),
                            "member": member(ev["tweet_id"], ev["author_id"]), "cls": cls,
                            "created": ev["created_at"], "sent": sent, "ack": ack})

    lag_peak = 0

    async def watch() -> None:
        nonlocal lag_peak
        while not stop.is_set():
            try:
                lag_peak = max(lag_peak, sum((await ctx.monitor.lag()).values()))
            except KafkaError:
                pass
            await asyncio.sleep(1.0)

    stages_before = await ctx.stage_snapshot()
    redis_before = await command_stats(redis)
    redis_after = None
    window = CpuWindow(ctx.pids()).start()
    poller = asyncio.create_task(poll())
    watcher = asyncio.create_task(watch())
    try:
        with bar(desc=desc, total=int(duration), unit="s") as pb:
            async def ticking(i: int) -> None:
                await one(i)
                if i % 10 == 0:
                    pb.n = int(min(duration, i / rate))
                    pb.refresh()
            sent = await paced(rate, duration, ticking)
        await pub.producer.flush()
        stop.set()
        await asyncio.wait_for(poller, timeout=90)
        redis_after = await command_stats(redis)
    finally:
        stop.set()
        watcher.cancel()
        poller.cancel()
        await pub.stop()
        await redis.aclose()
    cpu = window.stop()
    ctx.check_worker()
    where = stage_diff(stages_before, await ctx.stage_snapshot())
    worst: dict[int, float] = {}
    for at, lag in sent_at:
        worst[int(at)] = max(worst.get(int(at), 0.0), lag)
    worst_seconds = [{"second": k, "max_lag_ms": round(v * 1000, 1)}
                     for k, v in sorted(worst.items(), key=lambda kv: -kv[1])[:5]]
    ended = time.time()
    worker_events = worker_log_events(ctx, run_began, ended)
    lag_by_second = [[k, round(v * 1000, 1)] for k, v in sorted(worst.items())]
    by_class: dict[str, Any] = {}
    for cls in sorted({c for c, _, _ in samples} | set(timeouts)):
        by_class[cls] = {"from_kafka_ack_ms": latency_summary(s for c, s, _ in samples if c == cls),
                         "from_created_at_ms": latency_summary(s for c, _, s in samples if c == cls),
                         "not_seen_within_60s": timeouts.get(cls, 0)}
    return {"tweet_rate_per_s": round(rate, 2), "duration_s": duration, "tweets": sent,
            "offered_deliveries_per_s": round(rate * g.expected_deliveries_per_tweet(), 1),
            "all_pushed_authors_from_kafka_ack_ms": latency_summary(s for _, s, _ in samples),
            "by_author_size": by_class, "peak_consumer_lag_msgs": lag_peak,
            "zscore_polls": polls[0], "longest_poll_interval_ms": round(polls[1] * 1000, 1),
            "worst_seconds_by_send_time": worst_seconds, "worker_log_warnings": worker_events,
            "began_at": run_began, "ended_at": ended, "max_lag_ms_by_send_second": lag_by_second,
            "machine_busy_share": cpu["machine_busy_share"], "cpu_s": cpu["cpu_s"],
            "cassandra_threads_cpu_s": cpu.get("cassandra_threads_cpu_s"),
            "outside_these_processes_cpu_s": cpu["outside_these_processes_cpu_s"],
            "where_time_goes": where, "redis_commands": command_delta(redis_before, redis_after)}


class Presence:
    """Which (sorted set, member) pairs are present, for the lag probes: one Lua call per ~1,000
    pairs (the script runs ZSCORE for each on the server) instead of a pipeline of ZSCOREs. Both
    cost Redis ~1.2 us per pair; the client's CPU per pair was 17 us pipelined and 3 us through
    the script here, and at the loaded points the probes are up to ~10,000 a second on the
    cores the pipeline runs on. A server that refuses the script (e.g. keys of several cluster
    slots) is asked by the pipeline from then on."""

    SCRIPT = """
local found = {}
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i]) then found[#found + 1] = i - 1 end
end
return found
"""
    CHUNK = 1_000

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.script = redis.register_script(self.SCRIPT)
        self.scripted = True

    async def check(self, pairs: list[tuple[str, bytes | str]]) -> set[int]:
        """Indexes of ``pairs`` whose member is in its sorted set."""
        found: set[int] = set()
        for lo in range(0, len(pairs), self.CHUNK):
            part = pairs[lo:lo + self.CHUNK]
            if self.scripted:
                try:
                    hits = await self.script(keys=[k for k, _ in part], args=[m for _, m in part])
                    found.update(lo + int(i) for i in hits)
                    continue
                except ResponseError:
                    self.scripted = False
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, m in part:
                    pipe.zscore(key, m)
                scores = await pipe.execute()
            found.update(lo + i for i, score in enumerate(scores) if score is not None)
        return found


def worker_log_events(ctx: RunContext, since: float, until: float) -> dict[str, Any]:
    """Warnings and errors the worker logged between two wall-clock times (its log is local time)."""
    out: dict[str, Any] = {"producer_buffer_full": 0, "lines": []}
    if ctx.worker is None:
        return out
    lo = datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M:%S")
    hi = datetime.fromtimestamp(until + 1).strftime("%Y-%m-%d %H:%M:%S")
    try:
        lines = ctx.worker.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if not line.startswith("[") or not ("WARNING" in line or "ERROR" in line):
            continue
        stamp = line[1:20]
        if not lo <= stamp <= hi:
            continue
        if "producer buffer full" in line:
            out["producer_buffer_full"] += 1
        elif len(out["lines"]) < 8:
            out["lines"].append(line[:200])
    return out
