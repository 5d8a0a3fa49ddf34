"""Phase 1, ``ceilings``: raw ceilings of the stores, measured from Python on this machine.

What the pipeline's figures are compared with: how fast this Python can drive
each server with no pipeline logic in between.

* Redis: pipelined ``ZADD`` (one member per command, as many keys as timelines)
  and pipelined ``ZREVRANGE 0 49`` on 800-entry sets; also ``RedisTimelines.push_many``
  (the Lua push the delivery stage runs) for entries/s as the pipeline writes them;
* Cassandra: ``CassandraStore.execute_many`` of prepared inserts into a copy of
  ``user_timeline`` (same schema), at the store's concurrency and a higher one;
* Kafka: a scratch topic filled by ``AIOKafkaProducer`` (acks=all), then read from
  the start by a bare ``AIOKafkaConsumer.getmany`` loop (msgs/s and MB/s).

Everything lives in the run's namespace (Redis prefix, keyspace, topic prefix) and
is removed afterwards.
"""
from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.asyncio import Redis

from bench.context import RunContext, log
from settings import Settings
from sinks.cassandra import CassandraStore
from sinks.redis_timeline import RedisTimelines, member


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


async def redis_ceiling(settings: Settings, *, ops: int, keys: int = 1000, batch: int = 1000) -> dict:
    redis = Redis.from_url(settings.redis_url)
    prefix = f"{settings.redis_prefix}ceil:"
    names = [f"{prefix}{k}" for k in range(keys)]
    try:
        began = time.perf_counter()
        for start in range(0, ops, batch):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + batch, ops)):
                    pipe.zadd(names[i % keys], {member(10**17 + i, 7): 0})
                await pipe.execute()
        zadd_s = time.perf_counter() - began

        # Read ceiling on 800-entry sets (the timeline cap), first page of 50.
        read_keys = names[: max(1, min(keys, 200))]
        async with redis.pipeline(transaction=False) as pipe:
            for k in read_keys:
                for j in range(800):
                    pipe.zadd(k, {member(10**16 + j, 9): 0})
            await pipe.execute()
        reads = max(ops // 4, 1000)
        began = time.perf_counter()
        for start in range(0, reads, batch):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + batch, reads)):
                    pipe.zrevrange(read_keys[i % len(read_keys)], 0, 49)
                await pipe.execute()
        zrev_s = time.perf_counter() - began

        # The delivery stage's own write: the Lua push, one entry per user, 500 users per pipeline.
        timelines = RedisTimelines(redis, prefix=prefix, cap=settings.timeline_cap, ttl_s=600)
        for k in range(keys):  # pushes only touch existing timelines
            await redis.zadd(timelines.key(k), {member(0, 0): 0})
        pushes = max(ops // 4, 1000)
        began = time.perf_counter()
        for start in range(0, pushes, 500):
            adds = {}
            for i in range(start, min(start + 500, pushes)):
                adds.setdefault(i % keys, []).append((10**17 + i, 7))
            await timelines.push_many(adds)
        push_s = time.perf_counter() - began
        return {
            "zadd_ops": ops, "zadd_per_s": _rate(ops, zadd_s),
            "zrevrange_ops": reads, "zrevrange_0_49_per_s": _rate(reads, zrev_s),
            "lua_push_entries": pushes, "lua_push_entries_per_s": _rate(pushes, push_s),
            "keys": keys, "pipeline_batch": batch,
        }
    finally:
        keys_left = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys_left), 1000):
            await redis.unlink(*keys_left[i : i + 1000])
        await redis.aclose()


async def cassandra_ceiling(settings: Settings, *, rows: int, concurrencies: tuple[int, ...] = (64, 256)) -> dict:
    store = await asyncio.to_thread(CassandraStore.open, settings)
    ks = settings.cassandra_keyspace
    table = f"{ks}.ceiling_user_timeline"
    try:
        await asyncio.to_thread(
            store.session.execute,
            f"CREATE TABLE IF NOT EXISTS {table} (user_id bigint, tweet_id bigint, author_id bigint,"
            " PRIMARY KEY (user_id, tweet_id)) WITH CLUSTERING ORDER BY (tweet_id DESC)",
            timeout=60,
        )
        store._stmts["ceiling_insert"] = await asyncio.to_thread(  # noqa: SLF001 - a bench-only statement
            store.session.prepare, f"INSERT INTO {table} (user_id, tweet_id, author_id) VALUES (?, ?, ?)"
        )
        runs = {}
        base = 0
        for conc in concurrencies:
            store.concurrency = conc
            # Warm-up (connections, the JIT of the server), not measured.
            await store.execute_many(("ceiling_insert", (u, base + u, 1)) for u in range(2000))
            base += 10**6
            chunk = 20_000
            began = time.perf_counter()
            for start in range(0, rows, chunk):
                await store.execute_many(
                    ("ceiling_insert", (i % 5000, base + i, 7)) for i in range(start, min(start + chunk, rows))
                )
            runs[str(conc)] = _rate(rows, time.perf_counter() - began)
            base += 10**7
        best = max(runs, key=lambda k: runs[k])
        # The same rows as UNLOGGED batches, as the pipeline writes them (CassandraStore's own
        # batching, within the server's batch limits): the ceiling to hold fanout against.
        store.concurrency = 64
        store.ROW_KEYS = {**CassandraStore.ROW_KEYS, "ceiling_insert": ("ceiling_user_timeline", (0, 1))}
        await store.execute_many(("ceiling_insert", (u, base + u, 1)) for u in range(2000))
        base += 10**6
        began = time.perf_counter()
        for start in range(0, rows, 20_000):
            await store.execute_many(
                ("ceiling_insert", (i % 5000, base + i, 7)) for i in range(start, min(start + 20_000, rows))
            )
        batched = _rate(rows, time.perf_counter() - began)
        # The same batching with one row per partition: the shape of a steady load, where each
        # user gets about one row per batch (a burst writes tens of rows per user's partition).
        base += 10**6
        began = time.perf_counter()
        for start in range(0, rows, 20_000):
            await store.execute_many(
                ("ceiling_insert", (10**9 + base + i, base + i, 7)) for i in range(start, min(start + 20_000, rows))
            )
        single_row = _rate(rows, time.perf_counter() - began)
        return {"rows": rows, "inserts_per_s_by_concurrency": runs, "inserts_per_s": runs[best],
                "best_concurrency": int(best), "store_default_concurrency": 64,
                "batched_inserts_per_s": batched,
                "batched_one_row_per_partition_per_s": single_row,
                "batched": {"statements_per_batch": store.batch_size, "partitions_per_batch": store.batch_partitions,
                            "bytes_per_batch": store.batch_bytes, "batches_in_flight": store.batch_concurrency}}
    finally:
        try:
            await asyncio.to_thread(store.session.execute, f"DROP TABLE IF EXISTS {table}", timeout=60)
        finally:
            await asyncio.to_thread(store.close)


async def kafka_ceiling(settings: Settings, *, messages: int, partitions: int, size: int = 220) -> dict:
    topic = f"{settings.topic_tweets}-ceiling"
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs(), request_timeout_ms=60_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, settings.topic_replication)])
        producer = AIOKafkaProducer(**settings.kafka_kwargs(), acks="all",
                                    enable_idempotence=True, linger_ms=5, max_batch_size=256 * 1024)
        await producer.start()
        body = orjson.dumps({"type": "tweet_posted", "text": "x" * max(0, size - 40)})
        try:
            began = time.perf_counter()
            futures = []
            for i in range(messages):
                futures.append(await producer.send(topic, body, key=str(i).encode()))
                if len(futures) >= 20_000:
                    await asyncio.gather(*futures)
                    futures.clear()
            await asyncio.gather(*futures)
            produce_s = time.perf_counter() - began
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, **settings.kafka_kwargs(), group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
        await consumer.start()
        try:
            got = 0
            nbytes = 0
            began = None
            deadline = time.monotonic() + 300
            while got < messages and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
                for records in batch.values():
                    if began is None:
                        began = time.perf_counter()
                    got += len(records)
                    nbytes += sum(len(r.value) for r in records)
            consume_s = time.perf_counter() - (began or time.perf_counter())
        finally:
            await consumer.stop()
        return {
            "messages": messages, "message_bytes": len(body), "partitions": partitions,
            "produce_acks_all_msgs_per_s": _rate(messages, produce_s),
            "consume_msgs_per_s": _rate(got, consume_s),
            "consume_mb_per_s": round(nbytes / consume_s / 1e6, 1) if consume_s > 0 else 0.0,
            "consumed": got,
        }
    finally:
        try:
            await admin.delete_topics([topic])
        except Exception:  # noqa: BLE001 - best effort; the run's cleanup lists topics again
            pass
        await admin.close()


async def run(ctx: RunContext) -> dict:
    settings = ctx.settings
    full = ctx.args.scale == "full"
    out = {}
    log("ceilings: redis")
    out["redis"] = await redis_ceiling(settings, ops=200_000 if full else 20_000)
    log("ceilings: cassandra")
    out["cassandra"] = await cassandra_ceiling(settings, rows=100_000 if full else 10_000,
                                               concurrencies=(64, 256) if full else (64,))
    log("ceilings: kafka")
    out["kafka"] = await kafka_ceiling(settings, messages=300_000 if full else 30_000,
                                       partitions=settings.topic_partitions)
    return out
