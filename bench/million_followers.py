"""One account with a million followers, through the real pipeline.

    python -m bench.million_followers [--followers 1000000] [--partitions 8] [--sample 50]

The design's hard case: an account far above the celebrity threshold. In an isolated
namespace on the local servers, with a real worker:

1. the star posts a tweet (T0) before anyone follows;
2. ``--followers`` follow events for the star go to the ``follows`` topic (followers
   are fresh ids with no other activity), and the pipeline catches up; checkpoints
   record the follower-edge changelog and the RocksDB folder as they grow, so the
   bytes per follow can be compared at 10% and at 100%;
3. the star posts T1, which must not be pushed (a celebrity), and ``--sample``
   followers unfollow;
4. checks, against the real stores: the star's status row (followers = N - sample,
   celebrity), no ``user_timeline`` row for T1 at a sample of followers, and each
   sampled follower's home timeline through the reader (``query.reader``) equals the
   reference: [T1, T0] for followers, [] for the ones who unfollowed.

Writes ``bench/results/million-followers-<timestamp>.json`` and ``.md``. Every figure
is for this machine (2 cores shared by Kafka, Cassandra, Redis, PostgreSQL and the
worker), one worker.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.context import open_reader, provision
from localenv.host import STATE
from localenv.worker import Worker
from localenv.workload import produce
from ops.lag import wait_caught_up
from ops.schema import drop_namespace
from settings import Settings, get_settings

RESULTS = Path(__file__).resolve().parent / "results"
STAR = 777_000_000_001
FOLLOWER_BASE = 900_000_000_000
T0, T1 = 1_000_000_000_000_000, 1_000_000_000_500_000  # Snowflake-like ids, T1 newer
AT = 1_760_000_000_000


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def kafka_log_dirs(settings: Settings) -> list[Path]:
    """The running broker's ``log.dirs`` (from the server.properties on its command line),
    whichever checkout started it; this checkout's default when it cannot be seen."""
    from bench.sysstats import pid_listening_on

    port = int(settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])
    pid = pid_listening_on(port)
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        props = [Path(a.decode()) for a in args if a.endswith(b"server.properties") and not a.startswith(b"-")][-1]
        for line in props.read_text().splitlines():
            if line.startswith("log.dirs="):
                return [Path(d) for d in line.split("=", 1)[1].split(",")]
    except (OSError, IndexError, TypeError):
        pass
    return [STATE / "kafka-data"]


def topic_bytes(settings: Settings, prefix: str) -> int:
    """Bytes of the log segments of every partition of the topics whose name starts with ``prefix``."""
    return sum(f.stat().st_size for d in kafka_log_dirs(settings) for p in d.glob(f"{prefix}*") if p.is_dir()
               for f in p.glob("*.log"))  # segments only: index files are preallocated


async def publish(settings: Settings, events: Any, *, total: int, label: str) -> float:
    """Send events to their topics (``localenv.workload.produce``); returns events/s."""
    began = time.monotonic()
    sent = await produce(settings, events, progress=lambda n: print(
        f"\r{label}: published {n:,}/{total:,}", end="", flush=True))
    took = time.monotonic() - began
    print(f"\r{label}: published {sent:,} in {took:.1f}s ({sent / took:,.0f}/s)")
    return sent / took if took else 0.0


async def catch_up(settings: Settings, worker: Worker, *, label: str, timeout: float) -> float:
    """``ops.lag.wait_caught_up``, printing the lag with the rate and an ETA."""
    began = time.monotonic()
    most = 0

    def show(lag: int) -> None:
        nonlocal most
        most = max(most, lag)
        elapsed = time.monotonic() - began
        rate = (most - lag) / elapsed if elapsed > 0 else 0
        eta = f"{lag / rate:,.0f}s" if rate > 0 else "?"
        print(f"\r{label}: lag {lag:>9,}  {rate:,.0f} msg/s  ETA {eta}      ", end="", flush=True)

    took = await wait_caught_up(settings, timeout=timeout, check=worker.check, progress=show)
    print(f"\r{label}: caught up in {took:.1f}s{' ' * 40}")
    return took


def follow_events(first: int, last: int) -> Any:
    for i in range(first, last):
        yield {"type": "followed", "follower_id": FOLLOWER_BASE + i, "followee_id": STAR, "at": AT + i}


def checkpoint(settings: Settings, workdir: Path, follows: int) -> dict:
    changelog = topic_bytes(settings, f"{settings.app_id}-follower-edges-changelog")
    rocksdb = dir_bytes(workdir / "faust")
    return {
        "follows": follows,
        "follower_edges_changelog_bytes": changelog,
        "changelog_bytes_per_follow": round(changelog / follows, 1) if follows else None,
        "worker_rocksdb_bytes": rocksdb,
        "rocksdb_bytes_per_follow": round(rocksdb / follows, 1) if follows else None,
        "all_changelogs_bytes": topic_bytes(settings, f"{settings.app_id}-"),
    }


async def verify(settings: Settings, n: int, unfollowed: list[int], sample: list[int]) -> dict:
    async with open_reader(settings) as reader:
        store = reader.cassandra
        status = await store.execute("get_author_status", (STAR,))
        pushed_t1 = []
        for user in sample:
            rows = await store.execute("user_tl_below", (user, T1 + 1, T1 - 1, 5))
            pushed_t1.extend(r.tweet_id for r in rows)
        wrong = {}
        for user in sample + unfollowed:
            want = [] if user in unfollowed else [T1, T0]
            got = await reader.all_ids(user, page_size=20)
            if got != want:
                wrong[user] = {"got": got[:5], "want": want}
        row = status[0] if status else None
        return {
            "star_status": {"followers": row.followers, "celebrity": row.celebrity} if row else None,
            "expected_followers": n - len(unfollowed),
            "t1_rows_in_sampled_user_timelines": len(pushed_t1),
            "sampled_timelines": len(sample) + len(unfollowed),
            "timelines_differing_from_reference": wrong,
        }


async def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="million-"))
    settings = get_settings().isolated("million", uuid.uuid4().hex[:8], workdir, topic_partitions=args.partitions)
    await provision(settings)
    n = args.followers
    if args.profile:
        from bench.profile_worker import ProfiledWorker

        worker: Worker = ProfiledWorker(settings, workdir / "worker.log", args.profile).start()
    else:
        worker = Worker(settings, workdir / "worker.log").start()
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, shared by Kafka, Cassandra, Redis, PostgreSQL and the worker",
        "followers": n, "partitions": args.partitions, "workers": 1,
        "celebrity_threshold": settings.celebrity_threshold, "checkpoints": [],
    }
    try:
        await publish(settings, [{"type": "tweet_posted", "tweet_id": T0, "author_id": STAR, "text": "before",
                                  "created_at": AT}], total=1, label="T0")
        first = max(1, n // 10)
        phases = [(0, first), (first, n)]
        follow_seconds = 0.0
        publish_rates = []
        for lo, hi in phases:
            if args.profile and lo:
                worker.profile_start()  # type: ignore[attr-defined]
            publish_rates.append(await publish(settings, follow_events(lo, hi), total=hi - lo, label=f"follows {lo:,}..{hi:,}"))
            follow_seconds += await catch_up(settings, worker, label=f"follows up to {hi:,}", timeout=args.timeout)
            if args.profile and lo:
                worker.profile_stop()  # type: ignore[attr-defined]
            report["checkpoints"].append(checkpoint(settings, workdir, hi))
        report["follow_publish_per_s"] = [round(r) for r in publish_rates]
        report["follow_catch_up_s"] = round(follow_seconds, 1)
        report["follows_per_s_end_to_end"] = round(n / follow_seconds) if follow_seconds else None

        rng = random.Random(7)
        picked = rng.sample(range(n), 2 * args.sample)
        unfollowed = [FOLLOWER_BASE + i for i in picked[:args.sample]]
        sample = [FOLLOWER_BASE + i for i in picked[args.sample:]]
        tail = [{"type": "tweet_posted", "tweet_id": T1, "author_id": STAR, "text": "after", "created_at": AT + n + 1}]
        tail += [{"type": "unfollowed", "follower_id": u, "followee_id": STAR, "at": AT + n + 2} for u in unfollowed]
        await publish(settings, tail, total=len(tail), label="T1 and unfollows")
        report["t1_and_unfollows_catch_up_s"] = round(await catch_up(settings, worker, label="T1", timeout=args.timeout), 1)
        report["checks"] = await verify(settings, n, unfollowed, sample)
        checks = report["checks"]
        # A celebrity's T1 is pulled at read time, never written into timelines; under the
        # threshold it is pushed to every sampled follower.
        celebrity = checks["expected_followers"] >= settings.celebrity_threshold
        checks["expected_celebrity"] = celebrity
        checks["expected_t1_rows"] = 0 if celebrity else len(sample)
        report["ok"] = bool(
            checks["star_status"] and checks["star_status"]["followers"] == checks["expected_followers"]
            and checks["star_status"]["celebrity"] == celebrity
            and checks["t1_rows_in_sampled_user_timelines"] == checks["expected_t1_rows"]
            and not checks["timelines_differing_from_reference"]
        )
        report["worker_log_tail"] = worker.log_tail()[-2000:] if not report["ok"] else None
    finally:
        worker.stop()
        if not args.keep:
            report["cleanup"] = await drop_namespace(settings)
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def render_md(r: dict) -> str:
    lines = [
        "# One account with many followers",
        "",
        f"`python -m bench.million_followers --followers {r['followers']}`; {r['machine']}; "
        f"{r['partitions']} partitions, {r['workers']} worker; celebrity threshold {r['celebrity_threshold']:,}.",
        "",
        f"- Result: **{'OK' if r.get('ok') else 'FAILED'}**. Follows end to end: {r.get('follows_per_s_end_to_end')}/s "
        f"({r['followers']:,} follows caught up in {r.get('follow_catch_up_s')} s; published at "
        f"{r.get('follow_publish_per_s')}/s).",
        f"- The star's tweet after the follows (T1) and {len(r['checks']['timelines_differing_from_reference']) if 'checks' in r else '?'} "
        f"differing timelines: checks {r.get('checks')}.",
        "",
        "| follows | follower-edge changelog bytes | per follow | worker RocksDB bytes | per follow | all changelogs bytes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in r["checkpoints"]:
        lines.append(f"| {c['follows']:,} | {c['follower_edges_changelog_bytes']:,} | {c['changelog_bytes_per_follow']} | "
                     f"{c['worker_rocksdb_bytes']:,} | {c['rocksdb_bytes_per_follow']} | {c['all_changelogs_bytes']:,} |")
    lines += ["", "Bytes per follow stay flat from the first checkpoint to the last: a follow costs O(1) bytes "
              "in the changelog and the store, whatever the account's size (one row per edge, never a set value)."
              if len(r["checkpoints"]) > 1 else ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--sample", type=int, default=50, help="followers checked, and as many who unfollow")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds allowed per catch-up")
    parser.add_argument("--keep", action="store_true", help="leave the namespace in the servers")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON and Markdown go")
    parser.add_argument("--profile", type=Path, help="profile the worker during the second phase into this prefix")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = args.out_dir / f"million-followers-{stamp}"
    base.with_suffix(".json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    base.with_suffix(".md").write_text(render_md(report))
    print(render_md(report))
    print(f"written {base}.json and .md")
    raise SystemExit(0 if report.get("ok") else 1)


if __name__ == "__main__":
    main()
