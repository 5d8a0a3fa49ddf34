"""Three Kafka brokers with SASL/SCRAM and ACLs (localenv/kafka_cluster.py), for real.

One private cluster for the module (``.state/kcluster/``, free ports from 38600), the other
stores the default single-node Cassandra, Redis and PostgreSQL in a namespace per test.

* ACLs: a client without credentials, or with a wrong password, gets nothing; each role's
  principal is refused what it should not do, with the broker's own error code (and the
  broker logs the denial); the records it tried to write are not in the log.
* Workers join and leave under load (the single-broker version is
  tests/integration/test_scale_out.py): nothing delivered twice to a timeline or skipped.
* A broker SIGKILLed under load: tweets posted continuously through the real Post service
  (as its principal, acks=all), a real worker (as its principal) delivering them; no
  acknowledged tweet is lost (all in the log, the followers' timelines and PostgreSQL,
  every timeline equal to the reference from the log), delivery goes on. Measured and
  printed: the time from the kill to the first tweet delivered after it, and the produce
  errors the Post service answered meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from aiokafka.structs import TopicPartition

from localenv.host import STATE
from localenv.kafka_cluster import KafkaCluster
from localenv.services import ensure_up
from localenv.worker import Worker
from ops.group import describe as describe_group
from ops.lag import wait_caught_up
from ops.schema import run_sync
from ops.verify import read_log, verify
from schemas.events import TweetPosted, decode
from settings import Settings, get_settings, unthrottled
from tests.integration.pipeline_harness import drop, isolated_settings, provision, reader_for
from tests.integration.post_fixtures import expected_partition, read_topic, running_client, signup

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster():
    ensure_up(get_settings())  # the single-node Cassandra, Redis and PostgreSQL
    base_port = KafkaCluster.free_base_port(start=38600, step=10)
    cluster = KafkaCluster(STATE / "kcluster" / f"c{base_port}", base_port)
    began = time.monotonic()
    cluster.up()
    print(f"\nkafka cluster on {cluster.bootstrap} up in {time.monotonic() - began:.1f}s")
    try:
        yield cluster
    finally:
        cluster.reset(echo=lambda line: None)


@dataclass
class World:
    """One namespace on the cluster: its settings as each principal."""

    admin: Settings
    post: Settings
    worker: Settings
    query: Settings
    tmp: Path
    workers: list[Worker] = field(default_factory=list)

    def start_worker(self, name: str) -> Worker:
        settings = self.worker.replace(faust_datadir=str(self.tmp / name), worker_name=name)
        worker = Worker(settings, self.tmp / f"{name}.log").start()
        self.workers.append(worker)
        return worker


@pytest.fixture
def world(cluster: KafkaCluster, tmp_path: Path):
    base = isolated_settings(tmp_path, **unthrottled())
    admin = cluster.settings_for("admin", base)
    provision(admin)
    cluster.grant(admin)
    w = World(admin, cluster.settings_for("post", base), cluster.settings_for("worker", base),
              cluster.settings_for("query", base), tmp_path)
    try:
        yield w
    finally:
        for worker in w.workers:
            worker.stop()
        drop(admin)


async def end_offsets(settings: Settings, topic: str) -> int:
    consumer = AIOKafkaConsumer(**settings.kafka_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def produce_one(settings: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(**settings.kafka_kwargs(), acks="all", enable_idempotence=True,
                                request_timeout_ms=10_000)
    try:
        await producer.start()
        await producer.send_and_wait(topic, b'{"type":"nope"}', key=b"1")
    finally:
        await producer.stop()


def broker_log(cluster: KafkaCluster) -> str:
    return "\n".join(node.log_file.read_text(errors="replace") for node in cluster.nodes())


@pytest.mark.short
async def test_acls_refuse_what_a_principal_may_not_do(cluster: KafkaCluster, world: World, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="aiokafka")
    # No credentials: the SASL listener answers nothing but the handshake; the broker logs why.
    plain = world.admin.replace(kafka_security_protocol="PLAINTEXT", kafka_username="", kafka_password="")
    admin = AIOKafkaAdminClient(**plain.kafka_kwargs(), request_timeout_ms=5000)
    with pytest.raises(KafkaError) as unauthenticated:
        await asyncio.wait_for(admin.start(), 30)
    await admin.close()
    refused_plain = [line for line in broker_log(cluster).splitlines() if "Failed authentication" in line]
    assert refused_plain, "the brokers did not log the unauthenticated client"
    # A wrong password: the broker says so (aiokafka logs the broker's message, then gives up).
    wrong = world.post.replace(kafka_password="not-the-password")
    with pytest.raises(KafkaError) as bad_password:
        await produce_one(wrong, world.admin.topic_tweets)
    bad_password_lines = [r.getMessage() for r in caplog.records if "Authentication failed" in r.getMessage()]
    assert bad_password_lines, caplog.text[-2000:]

    before = {t: await end_offsets(world.admin, t) for t in (world.admin.topic_tweets, world.admin.topic_deliveries)}
    # The worker's principal cannot write a source topic.
    with pytest.raises(TopicAuthorizationFailedError) as worker_tweets:
        await produce_one(world.worker, world.admin.topic_tweets)
    # The Post service's principal cannot write the worker's topic ...
    with pytest.raises(TopicAuthorizationFailedError) as post_deliveries:
        await produce_one(world.post, world.admin.topic_deliveries)
    # ... nor the query service's.
    with pytest.raises(TopicAuthorizationFailedError):
        await produce_one(world.query, world.admin.topic_tweets)
    # ... and cannot read anything: not the log (as a group member or by assignment).
    consumer = AIOKafkaConsumer(world.admin.topic_tweets, **world.post.kafka_kwargs(), group_id=world.admin.app_id,
                                auto_offset_reset="earliest")
    with pytest.raises(KafkaError) as post_reads:
        await asyncio.wait_for(consumer.start(), 30)
        await asyncio.wait_for(consumer.getmany(timeout_ms=5000), 30)
    await consumer.stop()
    consumer = AIOKafkaConsumer(**world.post.kafka_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(world.admin.topic_tweets, 0)])
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(consumer.getmany(timeout_ms=5000), 30)
    finally:
        await consumer.stop()
    after = {t: await end_offsets(world.admin, t) for t in before}
    assert after == before, "a refused record reached the log"
    # Each principal can do its own job (the worker's is the failover test below).
    await produce_one(world.post, world.admin.topic_tweets)
    assert await end_offsets(world.admin, world.admin.topic_tweets) == before[world.admin.topic_tweets] + 1
    log = broker_log(cluster)
    denied = [line for line in log.splitlines() if "is Denied operation" in line and world.admin.topic_tweets in line]
    assert any("User:worker" in line for line in denied), "the broker did not log the worker's denied write"
    print(f"\nunauthenticated: {unauthenticated.value!r}; broker: {refused_plain[-1].strip()[:240]}\n"
          f"wrong password: {bad_password.value!r}; {bad_password_lines[0][:240]}\n"
          f"worker -> tweets: {worker_tweets.value!r}\npost -> deliveries: {post_deliveries.value!r}\n"
          f"post reads tweets: {post_reads.value!r}\nbroker: {denied[0].strip()[:300]}")


def doc_kcat_with_credentials() -> list[str]:
    """The two lines of docs/events.md's "With credentials" example (config file, kcat -F)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S) if "kcat -F" in b]
    return [line for line in block.splitlines() if line.strip()]


def run_doc_kcat(lines: list[str], settings: Settings, topic: str, cwd: Path) -> subprocess.CompletedProcess:
    script = "\n".join(lines).replace("-t tweets", f"-t {topic}")
    env = {**os.environ, "KAFKA_USER": settings.kafka_username, "KAFKA_PASSWORD": settings.kafka_password,
           "TL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.short
async def test_docs_kcat_example_with_a_named_producer(cluster: KafkaCluster, world: World) -> None:
    lines = doc_kcat_with_credentials()
    topic = world.admin.topic_tweets
    # The worker's principal may not write the source topic: kcat fails and nothing is written.
    refused = run_doc_kcat(lines, world.worker, topic, world.tmp)
    assert refused.returncode != 0 and "authorization failed" in (refused.stdout + refused.stderr).lower(), refused
    assert await read_topic(world.admin, topic) == []
    # A producer the operator names may.
    named = cluster.add_producer(f"importer-{uuid.uuid4().hex[:6]}", [topic])
    done = run_doc_kcat(lines, named, topic, world.tmp)
    assert done.returncode == 0, done
    (record,) = await read_topic(world.admin, topic)
    assert record.key == b"42" and record.partition == expected_partition(b"42", world.admin.topic_partitions)
    assert decode(record.value).tweet_id == 1790000000000000002
    print(f"\nkcat as the worker: {(refused.stdout + refused.stderr).strip()[:200]}")


@dataclass
class Load:
    """What the posters saw: acknowledged tweets and the Post service's refusals."""

    acked: dict[int, float] = field(default_factory=dict)  # tweet id -> monotonic time of its 201
    errors: list[tuple[float, int, str]] = field(default_factory=list)  # (monotonic, status, title)
    gave_up: int = 0


async def post_tweets(client, users: list[dict], load: Load, stop: asyncio.Event, seed: int,
                      interval: float) -> None:
    """Post tweets until ``stop``; a refused post is retried with its Idempotency-Key (the same
    tweet id) until it is acknowledged, as a careful client does."""
    rng = random.Random(seed)
    while not stop.is_set():
        author = rng.choice(users)
        headers = {**author["auth"], "Idempotency-Key": uuid.uuid4().hex}
        body = {"text": f"under failover {rng.random():.6f}"}
        for _ in range(120):
            resp = await client.post("/v1/tweets", json=body, headers=headers)
            if resp.status_code == 201:
                load.acked[int(resp.json()["tweet_id"])] = time.monotonic()
                break
            load.errors.append((time.monotonic(), resp.status_code, resp.json().get("title", resp.text[:80])))
            await asyncio.sleep(0.25)
        else:
            load.gave_up += 1
        await asyncio.sleep(interval)


async def social_graph(client, n: int = 24) -> tuple[list[dict], dict]:
    """``n`` users following 4 others each, and a watcher who follows them all (through the
    Post service)."""
    users = [await signup(client) for _ in range(n)]
    watcher = await signup(client)
    rng = random.Random(16)
    follows = [(watcher, u) for u in users]
    follows += [(u, v) for u in users for v in rng.sample(users, 4) if u is not v]
    for a, b in follows:
        resp = await client.post(f"/v1/users/{a['user_id']}/following", headers=a["auth"],
                                 json={"target_user_id": b["user_id"]})
        assert resp.status_code == 200, resp.text
    return users, watcher


async def first_delivery_after(reader, watcher: int, after_ms: int, epoch_ms: int, stop: asyncio.Event) -> float | None:
    """Monotonic time at which the watcher's materialized timeline (pushed by stage 2, not
    pulled at read time) first shows a tweet created after ``after_ms``."""
    from policies.snowflake import snowflake_timestamp_ms

    while not stop.is_set():
        page = await reader.page(watcher, limit=20)
        if any(t.tweet_id not in page.pulled and snowflake_timestamp_ms(t.tweet_id, epoch_ms) > after_ms
               for t in page.tweets):
            return time.monotonic()
        await asyncio.sleep(0.1)
    return None


async def coordinator_of(settings: Settings) -> int:
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        return await admin.find_coordinator(settings.app_id)
    finally:
        await admin.close()


async def pg_tweet_ids(settings: Settings) -> set[int]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, **settings.postgres_kwargs()) as conn:
        rows = await (await conn.execute("SELECT tweet_id FROM tweets")).fetchall()
    return {row[0] for row in rows}


@pytest.mark.slow
@pytest.mark.short
async def test_sigkill_one_broker_under_load_loses_no_acknowledged_tweet(cluster: KafkaCluster, world: World) -> None:
    worker = world.start_worker("w1")
    async with running_client(world.post) as client, reader_for(world.admin) as reader:
        users, watcher = await social_graph(client)
        await wait_caught_up(world.admin, timeout=180, check=worker.check)

        load, stop, stop_watch = Load(), asyncio.Event(), asyncio.Event()
        posters = [asyncio.create_task(post_tweets(client, users, load, stop, seed, 0.25)) for seed in range(4)]
        await asyncio.sleep(10)
        assert load.acked and not load.errors, (len(load.acked), load.errors[:3])
        victim = await coordinator_of(world.admin)
        killed_ms = int(time.time() * 1000)
        killed = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)
        watch = asyncio.create_task(first_delivery_after(reader, int(watcher["user_id"]), killed_ms,
                                                         world.admin.snowflake_epoch_ms, stop_watch))
        await asyncio.sleep(40)
        stop.set()
        await asyncio.gather(*posters)
        try:
            delivered = await asyncio.wait_for(watch, 120)
        finally:
            stop_watch.set()
        await asyncio.to_thread(cluster.start, victim)
        await asyncio.to_thread(cluster.wait_brokers, 3)
        caught_up = await wait_caught_up(world.admin, timeout=300, check=worker.check)

        after_kill = sorted(t for t in load.acked.values() if t > killed)
        errors = [e for e in load.errors if e[0] > killed]
        statuses = sorted({(status, title) for _, status, title in errors})
        window = f" within {errors[0][0] - killed:.1f}..{errors[-1][0] - killed:.1f}s" if errors else ""
        print(f"\nkilled broker {victim} (the group coordinator); {len(load.acked)} tweets acknowledged, "
              f"{len(after_kill)} after the kill; produce errors after the kill: {len(errors)} {statuses}{window}, "
              f"gave up {load.gave_up}; first ack after the kill {after_kill[0] - killed:.2f}s; "
              f"first delivery after the kill {delivered - killed:.2f}s; caught up {caught_up:.1f}s after the restart")
        assert worker.alive(), worker.log_tail()
        assert load.gave_up == 0 and after_kill, "posting did not resume after the kill"
        assert delivered is not None, "no tweet posted after the kill was delivered"

        # Nothing acknowledged is lost: in the log, in PostgreSQL, in the timelines.
        logged = {e.tweet_id for e in await read_log(world.admin) if isinstance(e, TweetPosted)}
        assert set(load.acked) <= logged, f"{len(set(load.acked) - logged)} acknowledged tweets not in the log"
        missing_pg = set(load.acked) - await pg_tweet_ids(world.admin)
        assert not missing_pg, f"{len(missing_pg)} acknowledged tweets not in PostgreSQL"
        watched = set(await reader.all_ids(int(watcher["user_id"]), page_size=200))
        assert set(load.acked) <= watched, f"{len(set(load.acked) - watched)} acknowledged tweets not delivered"
        report = await verify(world.admin, page_size=100, reader=reader)
        assert report.entries >= len(load.acked)
        assert report.diffs == {}, f"{len(report.diffs)} users differ: {list(report.diffs.items())[:3]}"


async def wait_members(settings: Settings, n: int, timeout: float = 120.0) -> None:
    """Until the group is stable with ``n`` members that each own partitions of ``tweets``."""
    last: object = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            last = await describe_group(settings)
            owned = [m.partitions.get(settings.topic_tweets) for m in last.members]
            if last.state == "Stable" and len(owned) == n and all(owned):
                return
        except KafkaError as exc:  # the coordinator is not ready yet
            last = exc
        await asyncio.sleep(0.5)
    raise AssertionError(f"the group never had {n} stable members owning partitions: {last!r}")


@pytest.mark.slow
async def test_workers_join_and_leave_under_load_nothing_twice_nothing_skipped(world: World) -> None:
    w1, w2 = world.start_worker("w1"), world.start_worker("w2")
    async with running_client(world.post) as client, reader_for(world.admin) as reader:
        users, watcher = await social_graph(client)
        await wait_members(world.admin, 2)
        load, stop = Load(), asyncio.Event()
        posters = [asyncio.create_task(post_tweets(client, users, load, stop, seed, 0.25)) for seed in range(4)]
        await asyncio.sleep(5)
        began = time.monotonic()
        w3 = world.start_worker("w3")
        await wait_members(world.admin, 3)
        joined = time.monotonic() - began
        await asyncio.sleep(5)
        began = time.monotonic()
        await asyncio.to_thread(w1.stop)
        await wait_members(world.admin, 2)
        left = time.monotonic() - began
        await asyncio.sleep(5)
        stop.set()
        await asyncio.gather(*posters)

        def check() -> None:
            w2.check()
            w3.check()

        await wait_caught_up(world.admin, timeout=300, check=check)
        print(f"\n{len(load.acked)} tweets acknowledged, {len(load.errors)} refused; a third worker owned "
              f"partitions {joined:.1f}s after it started, the group was stable without the first "
              f"{left:.1f}s after its SIGTERM")
        assert not load.errors and load.gave_up == 0, load.errors[:3]
        watched = await reader.all_ids(int(watcher["user_id"]), page_size=200)
        assert len(watched) == len(set(watched)), "a tweet is twice in the watcher's timeline"
        assert set(load.acked) <= set(watched), f"{len(set(load.acked) - set(watched))} tweets skipped"
        report = await verify(world.admin, page_size=100, reader=reader)
        assert report.entries >= len(load.acked)
        assert report.diffs == {}, f"{len(report.diffs)} users differ: {list(report.diffs.items())[:3]}"
