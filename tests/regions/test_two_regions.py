"""The regions topology end to end (``localenv/regions.py``): two regions, each with its
own Kafka, Redis, stream worker, Post and query service, Cassandra in two data centers,
PostgreSQL replicated from a to b, MirrorMaker 2 copying a's source topics to b.

* A tweet posted in a reaches a follower's home timeline read from b's query service
  (cross-region lag measured, p50/p99), and so do deletes and unfollows; sign-ups,
  follows and tweets sent to b's Post service are forwarded to a's.
* b keeps serving reads while a's Kafka and a's services are down, and catches up with
  nothing lost when a returns (a burst a acknowledged but MirrorMaker had not copied when
  a died included).
* MirrorMaker SIGKILLed while it copies loses nothing (at least once, a's order kept).
* After catch-up both regions' timelines equal the reference of a's log: 0 differences.

Its own servers on 127.0.3.1 / 127.0.4.1 in ``.state/regions-test/`` (never the addresses
of ``./dev services up --topology regions``), stopped and deleted afterwards.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time

import pytest

from bench.region_lag import RegionClient, World, measure, summary
from localenv.host import STATE
from localenv.regions import RegionSpec, RegionsTopology
from localenv.services import start_all
from ops.lag import wait_caught_up
from ops.verify import read_log, verify
from schemas import source_topics
from schemas.events import TweetPosted
from settings import get_settings, unthrottled
from tests.integration.post_fixtures import read_topic

pytestmark = [pytest.mark.regions]

SPECS = (RegionSpec("a", "127.0.3.1", "dc1", "primary"), RegionSpec("b", "127.0.4.1", "dc2", "secondary"))
PARTITIONS = 8
CELEBRITY_THRESHOLD = 12  # the celebrity has 19 followers, the authors ~4: pulled and pushed tweets


@pytest.fixture(scope="module")
def topology(request):
    base = get_settings().replace(topic_partitions=PARTITIONS, celebrity_threshold=CELEBRITY_THRESHOLD,
                                  celebrity_hysteresis=2, **unthrottled())
    topo = RegionsTopology(STATE / "regions-test", base, specs=SPECS)
    topo.reset(lambda line: None)
    failed_before = request.session.testsfailed
    topo.up(PARTITIONS)
    yield topo
    if request.session.testsfailed > failed_before:
        print_log_tails(topo.state)  # the reset below deletes them (a CI run keeps only its output)
    topo.reset()


def print_log_tails(state, lines: int = 40) -> None:
    """The last lines of every log of the topology, on the real stdout (past pytest's capture)."""
    for path in sorted(state.rglob("*.log")):
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            tail = [f"(unreadable: {exc})"]
        sys.__stdout__.write(f"\n===== {path.relative_to(state)} (last {len(tail)} lines) =====\n" + "\n".join(tail) + "\n")
    sys.__stdout__.flush()


async def caught_up(topo: RegionsTopology, timeout: float = 240.0) -> None:
    """b's mirror holds a's log, and both regions' workers have consumed theirs."""
    await asyncio.to_thread(topo.mirror.wait_caught_up, timeout)
    for name in ("a", "b"):
        await wait_caught_up(topo.region(name).settings_for("worker"), timeout=timeout, settle=3.0)


async def assert_both_regions_equal_the_reference(topo: RegionsTopology) -> None:
    a_log = topo.region("a").settings_for("worker")
    for name in ("a", "b"):
        report = await verify(topo.region(name).settings_for("worker"), log_settings=a_log)
        assert report.users > 0 and report.entries > 0
        assert report.ok, f"region {name}: {len(report.diffs)} timelines differ: {dict(list(report.diffs.items())[:5])}"


@pytest.mark.short
async def test_a_tweet_in_a_reaches_a_follower_in_b(topology: RegionsTopology) -> None:
    rng = random.Random(17)
    client = RegionClient(topology)
    try:
        world = await World.build(client, rng)
        # Measured from here: both workers have consumed the world's follows (a worker still
        # starting or rebalancing would otherwise show as lag, or fail the first probes).
        await caught_up(topology)
        samples = await measure(client, world, 40, 4, rng)
        lag = summary(samples)["all"]
        print(f"\ncross-region lag over {lag['b']['n']} tweets (201 in a -> a follower's first page): "
              f"read in a p50/p99 {lag['a']['p50_ms']}/{lag['a']['p99_ms']} ms, "
              f"read in b p50/p99 {lag['b']['p50_ms']}/{lag['b']['p99_ms']} ms")
        assert any(s["celebrity"] for s in samples) and not all(s["celebrity"] for s in samples)

        # A tweet sent to b's Post service is forwarded to a's and reaches both regions.
        follower = world.follows[world.authors[0]][0]
        forwarded = await client.tweet("b", world.authors[0], "sent to b")
        for region in ("a", "b"):
            await client.wait_for(region, follower, lambda ids: forwarded in ids)

        # A read marker written through b is on a's PostgreSQL: every device reads it back.
        put = await client.http.put(f"{client.url('b', 'query')}/v1/users/{follower}/markers/home",
                                    json={"last_read_id": str(forwarded)}, headers=client.auth(follower))
        assert put.status_code == 200, put.text
        for region in ("a", "b"):
            got = await client.http.get(f"{client.url(region, 'query')}/v1/users/{follower}/markers",
                                        headers=client.auth(follower))
            assert got.status_code == 200 and got.json()["home"]["last_read_id"] == str(forwarded), got.text

        # Deletes and unfollows cross too.
        author = world.authors[1]
        follower = world.follows[author][0]
        mine = {s["tweet_id"] for s in samples if s["author"] == author}
        shown = [t for t in await client.home_ids("b", follower) or [] if t in mine]
        assert shown, "the follower's first page in b shows none of the author's tweets"
        gone = await client.tweet("a", author, "to be deleted")
        await client.wait_for("b", follower, lambda ids: gone in ids)
        await client.delete("a", author, gone)
        await client.wait_for("b", follower, lambda ids: gone not in ids)
        await client.unfollow("b", follower, author)
        await client.wait_for("b", follower, lambda ids: not ({gone, *shown} & set(ids)) and bool(ids))

        await caught_up(topology)
        await assert_both_regions_equal_the_reference(topology)
    finally:
        await client.aclose()


async def test_b_serves_reads_while_a_is_down_and_catches_up(topology: RegionsTopology) -> None:
    rng = random.Random(18)
    client = RegionClient(topology)
    a = topology.region("a")
    try:
        users = [await client.signup("a") for _ in range(12)]
        for follower in users[3:]:
            for author in rng.sample(users[:3], 2):
                await client.follow("a", follower, author)
        await caught_up(topology)
        await client.wait_for("b", users[-1], lambda ids: True)  # b's replica knows the readers

        # A burst acknowledged by a that MirrorMaker has not copied yet (it is held with
        # SIGSTOP meanwhile, as a slow link would), then a's Kafka and services die at once.
        mirror_pid = topology.mirror.our_pid()
        assert mirror_pid is not None
        os.kill(mirror_pid, signal.SIGSTOP)
        try:
            burst = await asyncio.gather(*(client.tweet("a", users[i % 3], f"burst {i}") for i in range(60)))
            unmirrored = sum(max(0, n) for n in (await asyncio.to_thread(topology.mirror.lag)).values())
            assert unmirrored >= len(burst)
            a.kafka.kill()
            for process in a.processes.values():
                process.kill()
        finally:
            os.kill(mirror_pid, signal.SIGCONT)

        reads = failures = 0
        refused = 0
        began = time.monotonic()
        while time.monotonic() - began < 20:
            for reader in users[3:]:
                resp = await client.home("b", reader)
                reads += 1
                failures += resp.status_code != 200
            resp = await client.http.post(f"{client.url('b', 'post')}/v1/tweets", json={"text": "while a is down"},
                                          headers=client.auth(users[0]))
            refused += resp.status_code == 503 and resp.json().get("detail", "").find("unreachable") >= 0
            await asyncio.sleep(0.2)
        print(f"\na killed with {unmirrored} of its records not yet in b; while it was down: {reads} reads "
              f"from b, {failures} not 200; {refused} writes to b refused (503)")
        assert reads > 100 and failures == 0 and refused > 0

        back = await asyncio.to_thread(start_all, topology.base, [a.kafka, *a.processes.values()])
        assert all(o.up for o in back), back
        await caught_up(topology)
        for reader in users[3:]:
            assert await client.home_ids("b", reader), f"reader {reader}: empty timeline in b"
        # Every acknowledged tweet is in a's log, so in the reference both regions equal.
        logged = {e.tweet_id for e in await read_log(a.settings_for("worker")) if isinstance(e, TweetPosted)}
        assert set(burst) <= logged, sorted(set(burst) - logged)[:5]
        await assert_both_regions_equal_the_reference(topology)
    finally:
        await client.aclose()


async def test_mirrormaker_killed_mid_stream_loses_nothing(topology: RegionsTopology) -> None:
    """MirrorMaker SIGKILLed while it copies: restarted, it copies again from its last
    committed positions; b's log then holds every record of a's (duplicates allowed: at
    least once), in a's order per partition, and b's timelines equal the reference."""
    rng = random.Random(19)
    client = RegionClient(topology)
    a, b = topology.region("a").settings_for("worker"), topology.region("b").settings_for("worker")
    try:
        users = [await client.signup("a") for _ in range(8)]
        for follower in users[2:]:
            await client.follow("a", follower, rng.choice(users[:2]))
        posts = [asyncio.ensure_future(client.tweet("a", users[i % 2], f"mirrored {i}")) for i in range(120)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(topology.mirror.kill)
        posted = await asyncio.gather(*posts)
        assert all(o.up for o in await asyncio.to_thread(start_all, topology.base, [topology.mirror]))
        await caught_up(topology)

        def per_partition(records: list) -> dict[tuple[str, int], list[bytes]]:
            out: dict[tuple[str, int], list[bytes]] = {}
            for r in records:
                out.setdefault((r.topic, r.partition), []).append(r.value)
            return out

        source = per_partition([r for t in source_topics(a) for r in await read_topic(a, t)])
        copied = per_partition([r for t in source_topics(b) for r in await read_topic(b, t)])
        duplicates = 0
        for tp, values in source.items():
            got = copied.get(tp, [])
            firsts = list(dict.fromkeys(got))  # the order of first appearance
            assert firsts == list(dict.fromkeys(values)), f"{tp}: b's records differ from a's (order or content)"
            duplicates += len(got) - len(firsts)
        print(f"\nMirrorMaker SIGKILLed mid-stream: {sum(map(len, source.values()))} records in a, every one in b "
              f"in a's order per partition, {duplicates} copied twice")
        logged = {e.tweet_id for e in await read_log(b) if isinstance(e, TweetPosted)}
        assert set(posted) <= logged
        await assert_both_regions_equal_the_reference(topology)
    finally:
        await client.aclose()

