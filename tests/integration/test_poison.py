"""Poison suite: no message the broker accepts may stop delivery for anyone (issue 10, item 7).

One real worker in an isolated namespace and a small world: an author with one follower
on every partition, stale users (last active a year ago) for ``user-activity``. Then, on
each topic the pipeline consumes (``tweets``, ``follows``, ``user-activity``,
``timeline-deliveries``) and for each class of bad message below, the bad message is
produced with aiokafka (raw bytes, exact partition), immediately followed by a valid
event on the same partition whose effect must be in a user's home timeline (Cassandra
``user_timeline``) within ``LIMIT_S`` of its produce:

* ``tweets``: a tweet by the partition's author reaches the author's follower;
* ``follows``: a new follower of the partition's author is backfilled with its tweet;
* ``user-activity``: a stale user of the partition comes back and is rebuilt;
* ``timeline-deliveries``: an ``add`` op for the partition's follower is written.

Outcome per class: processed (valid but odd: extra fields, a newline in the text, a key
that is not the documented id or no key, a message on the wrong partition - re-sent to
the right one, docs/events.md), or dead-lettered: at least one record on the namespace's
dead-letters topic naming its topic, partition and offset (at-least-once may repeat it).
Values the stores cannot hold (NUL or other controls in text, lone surrogates, year 10000,
ids outside 1..2^63-1) and ambiguous ones (duplicate keys, ids written as floats) are
dead-lettered. No dead-letter record may exceed 8 KiB. At the end the worker is alive with
no crashed agent, and PostgreSQL holds exactly the valid tweets (and follows) of the run.

Each partition of each topic has a loop, all running concurrently, that goes through its
classes one after the other; a loop stops at the first valid event still missing after
``GIVE_UP_S`` (its partition is stuck).
``POISON_ONLY=<regex>`` runs only the cases whose ``topic:class`` matches.
"""
from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import psycopg
from aiokafka import AIOKafkaProducer

from localenv.worker import Worker
from ops.lag import wait_caught_up
from policies.partitioning import partition_for_id
from settings import Settings
from sinks.cassandra import CassandraStore
from tests.integration.pipeline_harness import drop, isolated_settings, provision
from tests.integration.post_fixtures import read_topic

LIMIT_S = 5.0  # a valid event behind a bad one is visible within this
GIVE_UP_S = 15.0  # ... and if not within this, its partition is stuck
MAX_DEAD_LETTER = 8 * 1024
YEAR_10000_MS = 253402300800000
DAY_MS = 86_400_000
RAW = "@@raw@@"  # placeholder for bytes orjson cannot write (1.0, 1e0, 2**64+1, dup keys...)
KINDS = ("tweets", "follows", "activity", "deliveries")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Msg:
    key: bytes | None
    value: bytes | None
    partition: int
    effect: tuple[int, int] | None = None  # (user, tweet) that must reach user_timeline


@dataclass
class Case:
    kind: str
    name: str
    bad: Msg
    valid: Msg
    dead: bool  # True: dead-lettered; False: processed (bad.effect must show)
    offset: int | None = None
    latency: float | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


def spliced(ev: dict, text: bytes) -> bytes:
    """``ev`` as JSON, its field set to RAW replaced by the raw JSON ``text``."""
    return orjson.dumps(ev).replace(b'"%s"' % RAW.encode(), text, 1)


class World:
    """Ids of one run; every valid event has an effect on one user's timeline."""

    def __init__(self, settings: Settings) -> None:
        self.p = settings.topic_partitions
        self._user = 1000
        self.tweet_lo = (now_ms() - 1288834974657) << 22  # Snowflake-like ids of this run
        self._tweet = self.tweet_lo
        self.authors = [self.user(p) for p in range(self.p)]
        self.followers = [self.user(p) for p in range(self.p)]
        self.seeds = [self.tweet() for _ in range(self.p)]  # one tweet per author, posted first
        self.stale: list[int] = []  # users who follow their partition's author, last active long ago
        self.tweets_valid: set[int] = set(self.seeds)
        self.follows_valid: set[tuple[int, int]] = set(zip(self.followers, self.authors))

    def user(self, partition: int | None = None) -> int:
        while True:
            self._user += 1
            if partition is None or partition_for_id(self._user, self.p) == partition:
                return self._user

    def tweet(self) -> int:
        self._tweet += 1
        return self._tweet

    @property
    def tweet_hi(self) -> int:
        return self._tweet

    def event(self, kind: str, p: int, *, live: bool) -> tuple[dict, int, tuple[int, int] | None]:
        """A valid event for partition ``p``: (value, key id, effect on a timeline). ``live``:
        the event is sent as valid (an ``activity`` one then needs a stale user, seeded)."""
        author, follower = self.authors[p], self.followers[p]
        at = now_ms()
        if kind == "tweets":
            t = self.tweet()
            return ({"type": "tweet_posted", "tweet_id": t, "author_id": author, "text": f"ok {t}",
                     "created_at": at}, author, (follower, t))
        if kind == "follows":
            g = self.user()
            return {"type": "followed", "follower_id": g, "followee_id": author, "at": at}, author, (g, self.seeds[p])
        if kind == "activity":
            u = self.user(p)
            if live:
                self.stale.append(u)
            return {"type": "user_active", "user_id": u, "at": at}, u, (u, self.seeds[p])
        t = self.tweet()
        op = {"op": "add", "tweet_id": t, "author_id": author, "created_at": at, "to": [follower]}
        return {"ops": [op]}, p, (follower, t)

    def message(self, kind: str, p: int) -> Msg:
        ev, key, effect = self.event(kind, p, live=True)
        self.note_valid(ev)
        return Msg(str(key).encode(), orjson.dumps(ev), p, effect)

    def note_valid(self, ev: dict) -> None:
        if ev.get("type") == "tweet_posted":
            self.tweets_valid.add(ev["tweet_id"])
        elif ev.get("type") == "followed":
            self.follows_valid.add((ev["follower_id"], ev["followee_id"]))


# --- the classes ------------------------------------------------------------------------
# A builder gets (world, kind, partition) and returns (the bad message, whether it is to be
# dead-lettered); a message to process carries its own effect, checked too.

Builder = Callable[[World, str, int], tuple[Msg, bool]]
FIELDS = {  # the events each topic's wrong-type and missing-field classes are built from
    "tweets": {"tweet_posted": ["type", "tweet_id", "author_id", "text", "created_at"],
               "tweet_deleted": ["tweet_id", "author_id", "deleted_at"]},
    "follows": {"followed": ["type", "follower_id", "followee_id", "at"]},
    "activity": {"user_active": ["type", "user_id", "at"]},
    "deliveries": {"add": ["ops", "op", "tweet_id", "author_id", "created_at", "to", "to[]"]},
}
ID_FIELD = {"tweets": "tweet_id", "follows": "follower_id", "activity": "user_id", "deliveries": "to[]"}
TIME_FIELD = {"tweets": "created_at", "follows": "at", "activity": "at", "deliveries": "created_at"}
STR_FIELDS, LIST_FIELDS = {"type", "text", "op"}, {"ops", "to"}
OTHER_TOPIC = {  # an event of another topic
    "tweets": lambda w, p: {"type": "followed", "follower_id": w.user(), "followee_id": w.authors[p], "at": now_ms()},
    "follows": lambda w, p: {"type": "tweet_posted", "tweet_id": w.tweet(), "author_id": w.authors[p],
                             "text": "hi", "created_at": now_ms()},
    "activity": lambda w, p: {"type": "followed", "follower_id": w.user(p), "followee_id": w.authors[0], "at": now_ms()},
    "deliveries": lambda w, p: {"type": "user_active", "user_id": w.followers[p], "at": now_ms()},
}
UNKNOWN_TYPE = {"tweets": "tweet_liked", "follows": "blocked", "activity": "user_idle", "deliveries": "like"}


def slot(ev: dict, name: str) -> tuple[Any, Any]:
    """(container, key) of a field: deliveries' fields other than ``ops`` are in the first op."""
    if "ops" not in ev or name == "ops":
        return ev, name
    op = ev["ops"][0]
    return (op["to"], 0) if name == "to[]" else (op, name)


def base(w: World, kind: str, p: int, event_type: str | None = None) -> tuple[dict, int]:
    """A fresh valid event for partition ``p`` (ids of its own, not checked) and its key id."""
    ev, key, _ = w.event(kind, p, live=False)
    if event_type == "tweet_deleted":
        ev = {"type": "tweet_deleted", "tweet_id": ev["tweet_id"], "author_id": ev["author_id"], "deleted_at": now_ms()}
    return ev, key


def broken(mutate: Callable[[World, str, int, dict], dict | bytes | None], event_type: str | None = None) -> Builder:
    """A class to dead-letter: ``mutate(w, kind, p, ev)`` breaks a fresh event (a dict, or raw bytes)."""
    def build(w: World, kind: str, p: int) -> tuple[Msg, bool]:
        ev, key = base(w, kind, p, event_type)
        out = mutate(w, kind, p, ev)
        return Msg(str(key).encode(), orjson.dumps(out) if isinstance(out, dict) else out, p), True
    return build


def put(field: str | dict[str, str], value: Any = None, *, splice: Callable[[Any], bytes] | None = None,
        event_type: str | None = None) -> Builder:
    """Set a field (a name, or one per kind) to ``value`` (or ``value(original)``), or to raw JSON."""
    def mutate(w: World, kind: str, p: int, ev: dict):
        container, k = slot(ev, field if isinstance(field, str) else field[kind])
        orig = container[k]
        container[k] = RAW if splice else value(orig) if callable(value) else value
        return spliced(ev, splice(orig)) if splice else ev
    return broken(mutate, event_type)


def missing(name: str, event_type: str) -> Builder:
    def mutate(w: World, kind: str, p: int, ev: dict) -> dict:
        container, k = slot(ev, name)
        del container[k]
        return ev
    return broken(mutate, event_type)


def wrong_types(name: str, event_type: str) -> dict[str, Builder]:
    """Every JSON type but the field's own: a quoted id, 7, 42.5, true, null, [x], {"id": x}."""
    own = "str" if name in STR_FIELDS else "list" if name in LIST_FIELDS else "int"
    values = {"str": str, "int": lambda o: 7, "float": lambda o: 42.5, "bool": lambda o: True,
              "null": lambda o: None, "list": lambda o: [o], "object": lambda o: {"id": o}}
    return {f"{event_type}.{name}={t}": put(name, make, event_type=event_type)
            for t, make in values.items() if t != own}


def valid_odd(change: Callable[[World, dict, int, int], tuple[bytes | None, dict, int]]) -> Builder:
    """A class to process: a valid event made odd by ``change(w, ev, key, p) -> (key, event, partition)``."""
    def build(w: World, kind: str, p: int) -> tuple[Msg, bool]:
        ev, key, effect = w.event(kind, p, live=True)
        kbytes, ev, partition = change(w, ev, key, p)
        w.note_valid(ev)
        return Msg(kbytes, orjson.dumps(ev), partition, effect), False
    return build


def with_extra(w: World, ev: dict, key: int, p: int) -> tuple[bytes, dict, int]:
    ev = {**ev, "v": 1, "event_id": "e-1", "meta": {"source": ["x", 1.5, None]}}
    if "ops" in ev:
        ev["ops"] = [{**ev["ops"][0], "note": "extra"}]
    return str(key).encode(), ev, p


def value(raw_value: bytes | None) -> Builder:
    return broken(lambda w, kind, p, ev: raw_value)


def duplicate_key(w: World, kind: str, p: int, ev: dict) -> bytes:
    name = {"tweets": "tweet_id", "follows": "follower_id", "activity": "user_id", "deliveries": "ops"}[kind]
    other = base(w, kind, p)[0][name]
    return orjson.dumps(ev)[:-1] + b',"%s":%s}' % (name.encode(), orjson.dumps(other))


def text(value: str | None = None, *, splice: bytes | None = None, dead: bool = True) -> Builder:
    if not dead:
        return valid_odd(lambda w, ev, key, p: (str(key).encode(), {**ev, "text": value}, p))
    return put("text", value, splice=splice and (lambda o: splice), event_type="tweet_posted")


DEEP = b"[" * 10_000 + b"]" * 10_000

GENERIC: dict[str, Builder] = {
    "extra_fields": valid_odd(with_extra),
    "not_utf8_in_string": broken(lambda w, kind, p, ev: spliced({**ev, "x": RAW}, b'"\xff\xfe ok"')),
    "binary_garbage": value(b"\x00\x9f\x92\x96\xff\xfe" * 20),
    "near_size_limit_1MB": broken(lambda w, kind, p, ev: {**ev, "pad": "a" * 1_000_000}),
    "control_bytes_140KB": value(bytes(i % 32 for i in range(140 * 1024))),
    "deep_nesting_10000": value(DEEP),
    "deep_nesting_in_event": broken(lambda w, kind, p, ev: spliced({**ev, "x": RAW}, DEEP)),
    "duplicate_key": broken(duplicate_key),
    "id_float_1.0": put(ID_FIELD, splice=lambda v: b"%d.0" % v),
    "id_exponent_e0": put(ID_FIELD, splice=lambda v: b"%de0" % v),
    "time_float_1.0": put(TIME_FIELD, splice=lambda v: b"%d.0" % v),
    "time_exponent_1e3": put(TIME_FIELD, splice=lambda v: b"1e3"),
    "id_2**63": put(ID_FIELD, 2**63),
    "id_2**64+1": put(ID_FIELD, splice=lambda v: b"%d" % (2**64 + 1)),
    "id_-1": put(ID_FIELD, -1),
    "id_0": put(ID_FIELD, 0),
    "time_year_10000": put(TIME_FIELD, YEAR_10000_MS),
    "time_before_1970": put(TIME_FIELD, -DAY_MS),
    "unknown_type": broken(lambda w, kind, p, ev: _unknown(ev, kind)),
    "event_of_another_topic": broken(lambda w, kind, p, ev: OTHER_TOPIC[kind](w, p)),
    "key_abc": valid_odd(lambda w, ev, key, p: (b"abc", ev, p)),
    "key_of_another_user": valid_odd(lambda w, ev, key, p: (str(w.followers[(p + 1) % w.p]).encode(), ev, p)),
    "key_with_spaces": valid_odd(lambda w, ev, key, p: (b" %d " % key, ev, p)),
    "null_key": valid_odd(lambda w, ev, key, p: (None, ev, p)),
    "wrong_partition": valid_odd(lambda w, ev, key, p: (str(key).encode(), ev, (p + 1) % w.p)),
    "tombstone": value(None),
    "empty_value": value(b""),
    "not_object_array": value(b"[1,2,3]"),
    "not_object_string": value(b'"tweet_posted"'),
    "not_object_number": value(b"42"),
    "not_object_null": value(b"null"),
}
SPECIFIC: dict[str, dict[str, Builder]] = {
    "tweets": {
        "text_nul": text("a\x00b"),
        "text_c0_controls": text("a\x07b\x1bc"),
        "text_tab_cr": text("a\tb\rc"),
        "text_del_c1": text("a\x7fb\x85c"),
        "text_lone_surrogate": text(splice=b'"a\\ud800b"'),
        "text_whitespace_only": text(" \n "),
        "text_281_chars": text("x" * 281),
        "text_newline": text("line 1\nline 2", dead=False),
    },
    "follows": {"self_follow": broken(lambda w, kind, p, ev: {**ev, "follower_id": w.authors[p]})},
    "activity": {},
    "deliveries": {},
}


def _unknown(ev: dict, kind: str) -> dict:
    if "ops" in ev:
        return {"ops": [{**ev["ops"][0], "op": UNKNOWN_TYPE[kind]}]}
    return {**ev, "type": UNKNOWN_TYPE[kind]}


def classes(kind: str) -> dict[str, Builder]:
    out: dict[str, Builder] = {}
    for event_type, names in FIELDS[kind].items():
        for name in names:
            out.update(wrong_types(name, event_type))
            if name != "to[]":
                out[f"{event_type}.{name}=missing"] = missing(name, event_type)
    out.update(GENERIC)
    out.update(SPECIFIC[kind])
    if kind == "deliveries":  # the key is not read there: only the value says where ops go
        del out["wrong_partition"]
    return out


def build_cases(w: World) -> dict[str, list[Case]]:
    only = re.compile(os.environ.get("POISON_ONLY", ""))
    out: dict[str, list[Case]] = {}
    for kind in KINDS:
        cases = out[kind] = []
        for i, (name, builder) in enumerate(classes(kind).items()):
            if not only.search(f"{kind}:{name}"):
                continue
            p = i % w.p
            bad, dead = builder(w, kind, p)
            cases.append(Case(kind, name, bad, w.message(kind, bad.partition), dead))
    return out


# --- the run ----------------------------------------------------------------------------


def topic_of(settings: Settings, kind: str) -> str:
    return {"tweets": settings.topic_tweets, "follows": settings.topic_follows,
            "activity": settings.topic_activity, "deliveries": settings.topic_deliveries}[kind]


class Pipeline:
    def __init__(self, settings: Settings, store: CassandraStore, producer: AIOKafkaProducer) -> None:
        self.settings, self.store, self.producer = settings, store, producer

    async def visible(self, effect: tuple[int, int]) -> bool:
        user, tweet = effect
        return bool(await self.store.execute("user_tl_below", (user, tweet + 1, tweet - 1, 1)))

    async def wait_visible(self, effects: list[tuple[int, int]], timeout: float) -> list[tuple[int, int]]:
        """The effects still missing after ``timeout``."""
        end = time.monotonic() + timeout
        missing = list(effects)
        while missing:
            found = await asyncio.gather(*(self.visible(e) for e in missing))
            missing = [e for e, ok in zip(missing, found) if not ok]
            if not missing or time.monotonic() > end:
                break
            await asyncio.sleep(0.05)
        return missing

    async def send(self, kind: str, msg: Msg):
        return await self.producer.send(topic_of(self.settings, kind), msg.value, key=msg.key, partition=msg.partition)

    async def run(self, cases: list[Case]) -> None:
        """Each bad message, then a valid one on its partition; stop if the partition is stuck."""
        for case in cases:
            try:
                bad = await self.send(case.kind, case.bad)
                began = time.monotonic()
                good = await self.send(case.kind, case.valid)
                case.offset = (await bad).offset
                await good
            except Exception as exc:  # noqa: BLE001 - a produce the broker refused: report it
                case.error = f"produce failed: {exc!r}"
                continue
            missing = await self.wait_visible([case.valid.effect], GIVE_UP_S)
            if missing:
                case.error = f"valid event on partition {case.bad.partition} not visible after {GIVE_UP_S:.0f}s"
                return
            case.latency = time.monotonic() - began
            if case.latency > LIMIT_S:
                case.error = f"valid event visible after {case.latency:.2f}s"


async def seed(pipe: Pipeline, w: World, worker: Worker) -> None:
    """Follows and old activity, then one tweet per author: followers get it, stale users go stale."""
    old = now_ms() - 365 * DAY_MS
    sends = [pipe.send("follows", Msg(str(a).encode(), orjson.dumps(
        {"type": "followed", "follower_id": f, "followee_id": a, "at": now_ms()}), partition_for_id(a, w.p)))
        for f, a in zip(w.followers, w.authors)]
    for u in w.stale:
        a = w.authors[partition_for_id(u, w.p)]
        w.follows_valid.add((u, a))
        sends.append(pipe.send("follows", Msg(str(a).encode(), orjson.dumps(
            {"type": "followed", "follower_id": u, "followee_id": a, "at": old}), partition_for_id(a, w.p))))
        sends.append(pipe.send("activity", Msg(str(u).encode(), orjson.dumps(
            {"type": "user_active", "user_id": u, "at": old}), partition_for_id(u, w.p))))
    await asyncio.gather(*[await s for s in sends])
    await wait_caught_up(pipe.settings, timeout=120, settle=0.5, check=worker.check)  # incl. the worker's start
    for p, (a, t) in enumerate(zip(w.authors, w.seeds)):
        await (await pipe.send("tweets", Msg(str(a).encode(), orjson.dumps(
            {"type": "tweet_posted", "tweet_id": t, "author_id": a, "text": f"seed {p}", "created_at": now_ms()}), p)))
    missing = await pipe.wait_visible(list(zip(w.followers, w.seeds)), 30)
    assert not missing, f"seed tweets not delivered: {missing}\n{worker.log_tail()}"
    for _ in range(300):
        metas = await asyncio.gather(*(pipe.store.execute("get_meta", (u,)) for u in w.stale))
        if all(m and m[0].stale for m in metas):
            break
        await asyncio.sleep(0.1)
    assert all(m and m[0].stale for m in metas), f"users not marked stale\n{worker.log_tail()}"
    rows = await asyncio.gather(*(pipe.store.execute("user_tl_below", (u, 2**63 - 1, 0, 10)) for u in w.stale))
    assert not any(rows), "a stale user's timeline already holds tweets: its return would prove nothing"


async def dead_letter_problems(settings: Settings, cases: list[Case]) -> list[str]:
    """Dead cases without a record naming them, processed cases with one, records over 8 KiB."""
    problems: list[str] = []
    for _ in range(20):
        records = await read_topic(settings, settings.topic_dead_letters)
        letters = [(len(r.value), orjson.loads(r.value)) for r in records]
        named = {(d.get("topic"), d.get("partition"), d.get("offset")) for _, d in letters}
        problems = []
        for c in cases:
            if c.offset is None:
                continue
            where = (topic_of(settings, c.kind), c.bad.partition, c.offset)
            if c.dead and where not in named:
                problems.append(f"{c.label}: no dead letter for {where}")
            if not c.dead and where in named:
                problems.append(f"{c.label}: dead-lettered, but it is a valid event")
        if not any("no dead letter" in p for p in problems):
            break
        await asyncio.sleep(0.5)
    problems += [f"dead letter of {size} bytes > {MAX_DEAD_LETTER}: {d.get('topic')}[{d.get('partition')}]@"
                 f"{d.get('offset')} {str(d.get('reason'))[:80]}" for size, d in letters if size > MAX_DEAD_LETTER]
    problems += [f"dead letter without reason/stage: {str(d)[:200]}" for _, d in letters
                 if not d.get("reason") or d.get("stage") not in ("fanout", "deliver")]
    return problems


async def projection_problems(settings: Settings, w: World, cases: list[Case]) -> list[str]:
    """PostgreSQL holds exactly the run's valid tweets, and its follows of the run's authors."""
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, **settings.postgres_kwargs()) as conn:
        for _ in range(40):
            tweets = {r[0] for r in await (await conn.execute(
                "SELECT tweet_id FROM tweets WHERE tweet_id > %s AND tweet_id <= %s",
                (w.tweet_lo, w.tweet_hi))).fetchall()}
            follows = set(await (await conn.execute(
                "SELECT follower_id, followee_id FROM follows WHERE followee_id = ANY(%s)", (w.authors,))).fetchall())
            if tweets >= w.tweets_valid and follows >= w.follows_valid:
                break
            await asyncio.sleep(0.25)
    out = []
    for what, got, want in (("tweets", tweets, w.tweets_valid), ("follows", follows, w.follows_valid)):
        if want - got:
            out.append(f"PostgreSQL {what}: {len(want - got)} valid ones missing, e.g. {sorted(want - got)[:3]}")
        for row in sorted(got - want):
            ids = [b"%d" % i for i in (row if isinstance(row, tuple) else (row,))]
            labels = [c.label for c in cases if c.bad.value and all(i in c.bad.value for i in ids)]
            out.append(f"PostgreSQL {what}: {row} is from a bad event ({', '.join(labels) or '?'})")
    return out


async def test_poison_messages_do_not_stop_delivery(tmp_path):
    settings = isolated_settings(tmp_path)
    provision(settings)
    w = World(settings)
    by_kind = build_cases(w)
    cases = [c for kind in KINDS for c in by_kind[kind]]
    assert cases, "POISON_ONLY matched no case"
    worker = Worker(settings, tmp_path / "worker.log").start()
    store = await asyncio.to_thread(CassandraStore.open, settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        pipe = Pipeline(settings, store, producer)
        await seed(pipe, w, worker)
        began = time.monotonic()
        # One loop per topic and partition: a stuck partition stops only its own loop.
        await asyncio.gather(*(pipe.run([c for c in by_kind[kind] if c.bad.partition == p])
                               for kind in KINDS for p in range(settings.topic_partitions)))
        ran_s = time.monotonic() - began
        problems = [f"{c.label} (partition {c.bad.partition}): {c.error}" for c in cases if c.error]
        skipped = [c.label for c in cases if c.offset is None and c.error is None]
        if skipped:
            problems.append(f"{len(skipped)} cases not run (behind a stuck case on their partition): "
                            + " ".join(skipped))
        processed = [c for c in cases if not c.dead and c.offset is not None]
        missing = await pipe.wait_visible([c.bad.effect for c in processed], LIMIT_S)
        problems += [f"{c.label}: valid event not processed (its effect {c.bad.effect} missing)"
                     for c in processed if c.bad.effect in missing]
        problems += await dead_letter_problems(settings, cases)
        problems += await projection_problems(settings, w, cases)
        if not worker.alive():
            problems.append(f"worker exited with {worker.proc.returncode}")
        log = worker.log_path.read_text(errors="replace")
        problems += [f"an agent crashed: {line.strip()}" for line in log.splitlines() if "Crashed reason=" in line]
        worst = {kind: max((c.latency for c in by_kind[kind] if c.latency is not None), default=None)
                 for kind in KINDS}
        summary = (f"{len(cases)} cases ({sum(c.dead for c in cases)} to dead-letter) in {ran_s:.1f}s; worst "
                   "latency per topic: " + ", ".join(
                       f"{k} {v:.2f}s" if v is not None else f"{k} -" for k, v in worst.items()))
        print("\n" + summary)
        assert not problems, (f"{len(problems)} problems; {summary}\n" + "\n".join(problems)
                              + f"\n--- worker log ---\n{worker.log_tail(40)}")
    finally:
        await producer.stop()
        await asyncio.to_thread(store.close)
        worker.stop(timeout=10)
        drop(settings)
