"""A seeded, reproducible workload of contract events, and a producer for it.

Used by the randomized correctness test, the demo and the benchmarks. The
generated log mixes tweets, deletes (some before their tweet), follows,
unfollows, refollows, celebrities that cross the threshold both ways, users
who go inactive and come back, and a few poison messages.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Callable, Iterable

import orjson
from aiokafka import AIOKafkaProducer

from policies.snowflake import SnowflakeGenerator
from schemas import ALL_EVENTS, encode_key
from settings import Settings

DAY_MS = 24 * 3600 * 1000
USER_BASE = 10**12


@dataclass
class Workload:
    events: list[dict] = field(default_factory=list)
    poison: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)  # (topic setting, key, value)
    users: list[int] = field(default_factory=list)
    celebrities: list[int] = field(default_factory=list)
    inactive: list[int] = field(default_factory=list)
    returning: list[int] = field(default_factory=list)


class _Clock:
    def __init__(self, start_ms: int) -> None:
        self.now = start_ms

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now

    def __call__(self) -> int:
        return self.now


def generate(
    seed: int,
    *,
    users: int = 200,
    tweets: int = 2000,
    celebrities: int = 3,
    celebrity_threshold: int = 20,
    inactive_share: float = 0.2,
    start_ms: int = 1_700_000_000_000,
    inactive_after_ms: int = 30 * DAY_MS,
) -> Workload:
    rng = random.Random(seed)
    clock = _Clock(start_ms)
    ids = SnowflakeGenerator(worker_id=7, clock=clock)
    w = Workload()
    w.users = [USER_BASE + i for i in range(users)]
    w.celebrities = rng.sample(w.users, celebrities)
    normal = [u for u in w.users if u not in w.celebrities]
    w.inactive = rng.sample(normal, int(len(normal) * inactive_share))
    w.returning = w.inactive[: len(w.inactive) // 2]
    follows: set[tuple[int, int]] = set()
    posted: list[tuple[int, int]] = []
    ev = w.events.append

    def follow(a: int, b: int) -> None:
        if a != b:
            follows.add((a, b))
            ev({"type": "followed", "follower_id": a, "followee_id": b, "at": clock()})

    def unfollow(a: int, b: int) -> None:
        follows.discard((a, b))
        ev({"type": "unfollowed", "follower_id": a, "followee_id": b, "at": clock()})

    # Day 0: everyone is active once; the inactive ones never again (until they return).
    for u in w.users:
        ev({"type": "user_active", "user_id": u, "at": clock.advance(1)})
    # A sparse graph, plus celebrities followed by more than the threshold.
    for u in w.users:
        for v in rng.sample(w.users, rng.randint(2, 12)):
            follow(u, v)
    for c in w.celebrities:
        for u in rng.sample(w.users, celebrity_threshold + rng.randint(2, 10)):
            follow(u, c)
    clock.advance(inactive_after_ms + DAY_MS)  # the inactive users are now past the limit

    def tweet() -> None:
        author = rng.choice(w.users)
        tid = ids.next_id()
        posted.append((tid, author))
        ev({"type": "tweet_posted", "tweet_id": tid, "author_id": author,
            "text": f"note #{rng.randint(0, 999)} from user {author - USER_BASE}", "created_at": clock()})

    active = [u for u in w.users if u not in w.inactive]
    for i in range(tweets):
        clock.advance(rng.randint(1, 5000))
        if i % 250 == 0:  # the active users stay active
            for u in active:
                ev({"type": "user_active", "user_id": u, "at": clock()})
        roll = rng.random()
        if roll < 0.80:
            tweet()
        elif roll < 0.86 and posted:
            tid, author = rng.choice(posted)
            ev({"type": "tweet_deleted", "tweet_id": tid, "author_id": author, "deleted_at": clock()})
        elif roll < 0.93:
            follow(rng.choice(w.users), rng.choice(w.users))
        elif follows:
            a, b = rng.choice(sorted(follows))
            unfollow(a, b)
            if rng.random() < 0.3:
                follow(a, b)  # refollow
        if i == tweets // 2:
            # One celebrity falls below the threshold minus hysteresis, then climbs back.
            c = w.celebrities[0]
            fans = [a for a, b in sorted(follows) if b == c]
            for a in fans[: len(fans) // 2 + 5]:
                unfollow(a, c)
        if i == (3 * tweets) // 4:
            for a in rng.sample(w.users, celebrity_threshold):
                follow(a, w.celebrities[0])
            # Half of the inactive users come back.
            for u in w.returning:
                ev({"type": "user_active", "user_id": u, "at": clock()})
    # A delete that arrives before its tweet.
    tid = ids.next_id()
    author = rng.choice(w.users)
    ev({"type": "tweet_deleted", "tweet_id": tid, "author_id": author, "deleted_at": clock()})
    ev({"type": "tweet_posted", "tweet_id": tid, "author_id": author, "text": "gone", "created_at": clock()})
    w.poison = [
        ("topic_tweets", b"1", b"{not json"),
        ("topic_tweets", b"2", orjson.dumps({"type": "tweet_posted", "tweet_id": "x", "author_id": 2})),
        ("topic_follows", b"3", orjson.dumps({"type": "followed", "follower_id": 3, "followee_id": 3, "at": 1})),
        ("topic_activity", b"4", orjson.dumps({"type": "nope"})),
        ("topic_tweets", None, b""),
    ]
    return w


# From the event registry (schemas/events.py): event type -> the Settings field of its
# topic, and -> the field that keys it.
TOPIC_OF = {t: cls.TOPIC for t, cls in ALL_EVENTS.items()}
KEY_OF = {t: cls.KEY for t, cls in ALL_EVENTS.items()}


def topic_name(settings: Settings, kind: str) -> str:
    """The topic a Settings field (``topic_tweets``, ...) names."""
    return getattr(settings, kind)


async def produce(
    settings: Settings, events: Iterable[dict], poison: Iterable[tuple] = (),
    progress: Callable[[int], None] | None = None, chunk: int = 20_000,
) -> int:
    """Publish events (keyed per the contract) and poison messages; returns the count.
    Acks are awaited ``chunk`` sends at a time (so a long iterator is not all in memory);
    ``progress`` gets the count sent after each chunk."""
    producer = AIOKafkaProducer(
        **settings.kafka_kwargs(), acks="all", enable_idempotence=True,
        linger_ms=5, max_batch_size=256 * 1024,
    )
    await producer.start()
    n = 0
    try:
        futures = []
        for event in events:
            kind = event["type"]
            futures.append(await producer.send(
                topic_name(settings, TOPIC_OF[kind]), orjson.dumps(event),
                key=encode_key(event[KEY_OF[kind]]),
            ))
            n += 1
            if len(futures) >= chunk:
                await asyncio.gather(*futures)
                futures.clear()
                if progress is not None:
                    progress(n)
        for kind, key, value in poison:
            futures.append(await producer.send(topic_name(settings, kind), value, key=key))
            n += 1
        for fut in futures:
            await fut
    finally:
        await producer.stop()
    return n
