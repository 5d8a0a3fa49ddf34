"""Celebrities' cached author windows stay equal to Cassandra while they are read and written.

Hybrid reads pull the celebrities a user follows from ``RedisTimelines.author_windows``
(filled from Cassandra's ``author_timeline`` by readers, pushed to and trimmed by stage 1).
A seeded random workload goes through Kafka into a real worker in rounds; after each round,
every user's home timeline, read from the top and paged to its end through the reader (which
fills missing windows and reads the cached ones), must equal the reference of the events so
far. Windows are small (cap 3), so full windows, trims, deletes inside a window and reads
below a window all happen; each round's tweets, and deletes of the celebrities' newest
tweets, land on windows filled by the previous round's reads. Finally every cached window must hold exactly the newest ids of its
author's Cassandra timeline.

With windows of the default size, a hybrid read whose timeline, windows and bodies are cached
is one Redis call (the first call reads the windows and the pulled bodies too) and still
answers the reference.
"""
from __future__ import annotations

import pytest

from localenv.worker import Worker
from localenv.workload import generate, produce
from ops.lag import wait_caught_up
from policies.reference import reference_home_timelines
from sinks.redis_client import connect
from sinks.redis_timeline import SENTINEL_ID, parse_member
from tests.integration.pipeline_harness import diff_timelines, drop, isolated_settings, provision, reader_for

CAP = 3


def newest_deletes(history: list[dict], authors: list[int], per_author: int = 2) -> list[dict]:
    """Deletes of each author's ``per_author`` newest tweets not deleted yet."""
    gone = {e["tweet_id"] for e in history if e["type"] == "tweet_deleted"}
    out = []
    for author in authors:
        ids = sorted((e["tweet_id"] for e in history if e["type"] == "tweet_posted" and e["author_id"] == author
                      and e["tweet_id"] not in gone), reverse=True)[:per_author]
        out += [{"type": "tweet_deleted", "tweet_id": t, "author_id": author, "deleted_at": 1_900_000_000_000}
                for t in ids]
    return out


@pytest.mark.slow
async def test_author_windows_match_the_reference_between_rounds(tmp_path):
    settings = isolated_settings(tmp_path, celebrity_threshold=15, celebrity_hysteresis=3, timeline_cap=40,
                                 backfill_limit=20, author_window_cap=CAP)
    provision(settings)
    workload = generate(31, users=90, tweets=900, celebrities=4, celebrity_threshold=15)
    events = workload.events
    cuts = [len(events) * k // 4 for k in range(1, 5)]
    worker = Worker(settings, tmp_path / "worker.log").start()
    redis = connect(settings)
    try:
        done, history, deletes = 0, [], []
        async with reader_for(settings) as reader:
            for cut in cuts:
                # The round's events, and deletes of the celebrities' newest tweets so far, which
                # the previous round's reads put in their windows.
                batch = deletes + events[done:cut]
                await produce(settings, batch, [])
                history += batch
                done = cut
                try:
                    await wait_caught_up(settings, timeout=300, check=worker.check)
                except TimeoutError:
                    pytest.fail(f"pipeline did not catch up\n{worker.log_tail()}")
                expected = reference_home_timelines(history)
                diffs = await diff_timelines(reader, expected, page_size=7)
                assert diffs == {}, f"after {cut} events: {len(diffs)} users differ, e.g. {list(diffs.items())[:3]}"
                deletes = newest_deletes(history, workload.celebrities)
            windows = reader.windows
            cached = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}atl:*")]
            assert len(cached) >= 3, "the hybrid reads filled the celebrities' windows"
            full = 0
            for key in cached:
                author = int(key.decode().rsplit("{", 1)[1].rstrip("}"))
                members = [parse_member(m) for m in await redis.zrevrangebylex(key, "+", "-")]
                ids = [t for t, a in members if t != SENTINEL_ID]
                assert all(a == author for t, a in members if t != SENTINEL_ID)
                rows = await reader.cassandra.execute("authors_tl_below", ([author], 2**63 - 1, CAP))
                assert ids == sorted((r.tweet_id for r in rows), reverse=True), f"window of {author}"
                full += len(ids) == CAP
            assert full >= 1, "some window was full (trimmed by pushes)"
            assert windows.cap == CAP
    finally:
        await redis.aclose()
        worker.stop()
        drop(settings)


@pytest.mark.slow
async def test_a_cached_hybrid_read_is_one_redis_call(tmp_path):
    settings = isolated_settings(tmp_path, celebrity_threshold=15, celebrity_hysteresis=3, timeline_cap=40,
                                 backfill_limit=20)
    provision(settings)
    workload = generate(32, users=60, tweets=500, celebrities=3, celebrity_threshold=15, inactive_share=0.0)
    # A reader who follows only the celebrities, one of whom posts most: its larger pages take
    # several rounds (the busy celebrity's pull is cut, the others' reach past the cut).
    reader_id, at = max(workload.users) + 1, max(e.get("at", 0) for e in workload.events)
    tweet_id = max(e.get("tweet_id", 0) for e in workload.events)
    extra: list[dict] = [{"type": "user_active", "user_id": reader_id, "at": at}]
    extra += [{"type": "followed", "follower_id": reader_id, "followee_id": c, "at": at} for c in workload.celebrities]
    for i in range(100):
        tweet_id += 1 << 22
        author = workload.celebrities[0] if i % 10 < 8 else workload.celebrities[1 + i % 2]
        extra.append({"type": "tweet_posted", "tweet_id": tweet_id, "author_id": author, "text": f"busy {i}",
                      "created_at": at + i})
    events = workload.events + extra
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        await produce(settings, events, [])
        try:
            await wait_caught_up(settings, timeout=300, check=worker.check)
        except TimeoutError:
            pytest.fail(f"pipeline did not catch up\n{worker.log_tail()}")
        expected = reference_home_timelines(events)
        celebrities = set(workload.celebrities)
        follows = {}
        for e in events:
            if e["type"] in ("followed", "unfollowed"):
                follows.setdefault(e["follower_id"], set())
                (follows[e["follower_id"]].add if e["type"] == "followed" else
                 follows[e["follower_id"]].discard)(e["followee_id"])
        hybrid = [u for u, want in expected.items() if follows.get(u, set()) & celebrities and len(want) > 12]
        assert len(hybrid) >= 10 and reader_id in hybrid, "the workload has users who follow celebrities"
        async with reader_for(settings) as reader:
            costs, shown_pulled = {}, 0
            for user in hybrid:
                await reader.page(user, limit=10)  # fills the timeline and the windows
                page = await reader.page(user, limit=10)
                assert [t.tweet_id for t in page.tweets] == expected[user][:10], f"user {user}"
                shown_pulled += bool(page.pulled)
                costs[user] = (page.stats.redis_round_trips, page.stats.cassandra_queries)
                # Below the first page the windows are read again (another cursor): same answer.
                below = await reader.page(user, limit=10, below=page.next_below)
                assert [t.tweet_id for t in below.tweets] == expected[user][10:20], f"user {user}, page 2"
            # Larger pages take several rounds per read: later rounds read the windows below
            # another cursor and must not use the first call's.
            diffs = await diff_timelines(reader, {u: expected[u] for u in hybrid}, page_size=25)
            assert diffs == {}, f"{len(diffs)} users differ, e.g. {list(diffs.items())[:3]}"
        assert shown_pulled >= len(hybrid) // 2, "most first pages show celebrities' tweets"
        # Without the windows in the first call no hybrid read is one call. Some need more: a
        # page that reaches below the user's floor (a pull-merge from Cassandra), or a first
        # round whose pulls were cut short (the busy celebrity).
        one_call = sum(c == (1, 0) for c in costs.values())
        assert one_call >= len(hybrid) // 2, f"(Redis calls, Cassandra queries) per read: {costs}"
    finally:
        worker.stop()
        drop(settings)
