"""In-memory test doubles and a driver for unit tests of the stream agents (no servers).

* ``FakeCassandra``, ``FakeRedis``, ``FakeTimelines``, ``FakeTweets``: implement exactly
  the methods the agents call, record every call, and keep a tiny model of the
  tables so that reads (author timelines) answer like Cassandra would.
* ``SentLog``: records what ``Outbox.flush`` publishes by standing in for
  ``faust.topics.Topic.send`` (the real ``Outbox`` runs unchanged).
* ``AgentDriver``: runs one batch through an agent with Faust's
  ``agent.test_context()`` and the in-memory table store. Each batch gets a fresh
  test context whose batches are sized to the messages (``one_batch``), so they are
  processed as exactly one batch (``drain_batches`` would otherwise hand over the
  first ones at once) and the call returns when the batch is done.

The Faust app of the unit tests is ``faust_app`` imported with settings of its own
(``unit_faust_app``): its own app id (so its changelog topics are named
``unit-tests-...``, never the service's ``home-timeline-...``), a broker address where
nothing listens (a send cannot reach, let alone create topics on, the real broker) and
tables in memory. The environment is changed only while ``faust_app`` is imported:
``get_settings()`` afterwards still answers for the real servers, which the integration
harness hands to its worker processes when both suites run in one pytest process.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterable, NamedTuple, Sequence

import orjson
import pytest
from faust.agents.agent import AgentTestWrapper
from faust.types import TP

UNIT_APP_ID = "unit-tests"
UNREACHABLE_KAFKA = "127.0.0.1:1"  # nothing listens on port 1


def unit_faust_app() -> ModuleType:
    """``faust_app`` imported with the unit tests' app id, broker and store (see above)."""
    import os
    import sys

    from settings import get_settings

    if "faust_app" not in sys.modules:
        overrides = {"TL_APP_ID": UNIT_APP_ID, "TL_KAFKA_BOOTSTRAP": UNREACHABLE_KAFKA,
                     "TL_FAUST_STORE": "memory://"}
        saved = {name: os.environ.get(name) for name in overrides}
        os.environ.update(overrides)
        get_settings.cache_clear()
        try:
            import faust_app  # noqa: F401
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            get_settings.cache_clear()
    module = sys.modules["faust_app"]
    conf = module.app.conf
    if conf.id != UNIT_APP_ID or [str(url) for url in conf.broker] != [f"kafka://{UNREACHABLE_KAFKA}"]:
        raise RuntimeError(
            f"faust_app was imported with app id {conf.id!r} and broker {conf.broker!r} before "
            "tests/unit/agent_doubles.py could give it the unit tests' own: import nothing that "
            "imports faust_app (agents, tables, streams) before tests/unit/conftest.py")
    return module


_faust_app = unit_faust_app()
app, settings = _faust_app.app, _faust_app.settings

import agents.loop as agent_loop  # noqa: E402  (after faust_app)
import agents.sinks as agent_sinks  # noqa: E402
from agents.take import drain_batches  # noqa: E402
from agents.sinks import Sinks  # noqa: E402
from sinks.redis_live import LiveChannels  # noqa: E402
from policies.first_wins import StoredTweet  # noqa: E402
from policies.partitioning import partition_for_id  # noqa: E402
from schemas import encode, encode_key  # noqa: E402
from sinks.cassandra import CassandraStore  # noqa: E402
from sinks.redis_following import RedisFollowing  # noqa: E402
from tables.graph import authors, early_deletes, follower_edges, following_edges, recipients  # noqa: E402

TABLES = (follower_edges, authors, early_deletes, following_edges, recipients)
# One list shared by every double of a test: (store, what, detail) in the order things
# happened, for assertions such as "Cassandra before Redis" or "stored before published".
Journal = list
BATCH_TIMEOUT_S = 10.0


class SimulatedCrash(BaseException):
    """A worker dying mid-batch (not an ``Exception``: ``with_retry`` does not retry it)."""


# --- Cassandra ---------------------------------------------------------------------


class TweetRow(NamedTuple):
    tweet_id: int


class FakeCassandra:
    """``CassandraStore.execute/execute_many/query_many/read_tweets`` over dicts.

    Every statement name must be one of ``CassandraStore.QUERIES`` and carry as
    many parameters as the CQL has ``?`` markers, so a typo in an agent fails here
    as it would against the real prepared statements.
    """

    gate = None  # acks do not wait for a commit log (sinks/cassandra_sync.py)

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.calls: list[tuple[str, str, tuple]] = []  # (method, statement, params)
        self.write_batches: list[list[tuple[str, tuple]]] = []  # one list per execute_many
        self.tweets: dict[int, dict] = {}
        self.author_tl: dict[int, set[int]] = {}
        self.user_tl: dict[int, dict[int, int]] = {}  # user -> {tweet: author}
        self.meta: dict[int, tuple[int, bool]] = {}  # user -> (floor, stale)
        self.following: dict[tuple[int, int], int] = {}
        self.author_status: dict[int, tuple[int, bool, int]] = {}
        self.celebrities: set[int] = set()
        self.crash_on_next_write = False  # the next execute_many raises SimulatedCrash, writing nothing
        # statement -> an event that an execute_many writing that statement waits for first
        self.held: dict[str, asyncio.Event] = {}

    # seeding
    def seed_author_timeline(self, author_id: int, tweet_ids: Iterable[int]) -> None:
        self.author_tl.setdefault(author_id, set()).update(tweet_ids)

    # checks
    @staticmethod
    def check(name: str, params: Sequence[Any]) -> tuple:
        cql = CassandraStore.QUERIES.get(name)
        if cql is None:
            raise KeyError(f"unknown Cassandra statement {name!r}")
        expected = cql.count("?")
        if len(params) != expected:
            raise TypeError(f"{name} takes {expected} parameters, got {len(params)}: {params!r}")
        return tuple(params)

    # the API used by the agents
    async def execute(self, name: str, params: Sequence[Any] = ()) -> list:
        params = self.check(name, params)
        self.calls.append(("execute", name, params))
        self.journal.append(("cassandra", name, params))
        return self._run(name, params)

    async def execute_many(self, items: Iterable[tuple[str, Sequence[Any]]]) -> None:
        batch = [(name, self.check(name, params)) for name, params in items]
        for name in {name for name, _ in batch} & self.held.keys():
            await self.held[name].wait()
        if self.crash_on_next_write:
            self.crash_on_next_write = False
            raise SimulatedCrash("worker died before the writes reached Cassandra")
        self.write_batches.append(batch)
        for name, params in batch:
            self.calls.append(("execute_many", name, params))
            self.journal.append(("cassandra", name, params))
            self._run(name, params)

    async def read_tweets(self, tweet_ids: Iterable[int]) -> dict[int, StoredTweet]:
        ids = sorted(set(tweet_ids))
        params = self.check("get_tweets", (ids,))
        self.calls.append(("read_tweets", "get_tweets", params))
        self.journal.append(("cassandra", "get_tweets", params))
        return {t: self.stored(t) for t in ids if t in self.tweets}

    def stored(self, tweet_id: int) -> StoredTweet:
        row = self.tweets[tweet_id]
        return StoredTweet(tweet_id, row.get("author_id"), row.get("text"), row.get("created_at"),
                           row.get("deleted_at"))

    async def query_many(self, name: str, params_list: Sequence[Sequence[Any]]) -> list[list]:
        out = []
        for params in params_list:
            params = self.check(name, params)
            self.calls.append(("query_many", name, params))
            self.journal.append(("cassandra", name, params))
            out.append(self._run(name, params))
        return out

    # helpers for assertions
    def user_tl_rows(self) -> list[tuple[int, int]]:
        return sorted((u, t) for u, rows in self.user_tl.items() for t in rows)

    def writes(self) -> list[tuple[str, tuple]]:
        return [w for batch in self.write_batches for w in batch]

    def writes_named(self, *names: str) -> list[tuple[str, tuple]]:
        return [w for w in self.writes() if w[0] in names]

    def reads(self, name: str | None = None) -> list[tuple[str, tuple]]:
        return [(n, p) for m, n, p in self.calls if m != "execute_many" and (name is None or n == name)]

    # the model
    def _run(self, name: str, p: tuple) -> list:
        if name == "insert_tweet":
            self.tweets.setdefault(p[0], {}).update(author_id=p[1], text=p[2], created_at=p[3])
        elif name == "mark_deleted":
            self.tweets.setdefault(p[1], {})["deleted_at"] = p[0]
        elif name == "insert_author_tl":
            self.author_tl.setdefault(p[0], set()).add(p[1])
        elif name == "delete_author_tl":
            self.author_tl.get(p[0], set()).discard(p[1])
        elif name == "author_tl_below":
            author, below, limit = p
            ids = sorted((t for t in self.author_tl.get(author, ()) if t < below), reverse=True)
            return [TweetRow(t) for t in ids[:limit]]
        elif name == "author_tl_above":
            author, above, limit = p
            ids = sorted((t for t in self.author_tl.get(author, ()) if t > above), reverse=True)
            return [TweetRow(t) for t in ids[:limit]]
        elif name == "insert_user_tl":
            self.user_tl.setdefault(p[0], {})[p[1]] = p[2]
        elif name == "delete_user_tl":
            self.user_tl.get(p[0], {}).pop(p[1], None)
        elif name == "clear_user_tl":
            self.user_tl.pop(p[0], None)
        elif name == "set_meta":
            self.meta[p[0]] = (p[1], p[2])
        elif name == "insert_following":
            self.following[(p[0], p[1])] = p[2]
        elif name == "delete_following":
            self.following.pop((p[0], p[1]), None)
        elif name == "set_author_status":
            self.author_status[p[0]] = (p[1], p[2], p[3])
        elif name == "insert_celebrity":
            self.celebrities.add(p[1])
        elif name == "delete_celebrity":
            self.celebrities.discard(p[1])
        else:  # pragma: no cover - a statement the agents are not expected to use
            raise AssertionError(f"FakeCassandra does not model {name!r}")
        return []


# --- Redis ---------------------------------------------------------------------------


class FakePipeline:
    """A non-transactional pipeline: commands are queued and applied by ``execute``."""

    def __init__(self, redis: "FakeRedis") -> None:
        self.redis = redis
        self.commands: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> "FakePipeline":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    def _queue(self, *command: Any) -> "FakePipeline":
        self.commands.append(command)
        return self

    def sadd(self, key: str, member: Any) -> "FakePipeline":
        return self._queue("sadd", key, member)

    def srem(self, key: str, member: Any) -> "FakePipeline":
        return self._queue("srem", key, member)

    def delete(self, key: str) -> "FakePipeline":
        return self._queue("delete", key)

    def incr(self, key: str) -> "FakePipeline":
        return self._queue("incr", key)

    def set(self, key: str, value: Any, ex: int | None = None) -> "FakePipeline":
        return self._queue("set", key, value, ex)

    def expire(self, key: str, seconds: int) -> "FakePipeline":
        return self._queue("expire", key, seconds)

    def publish(self, channel: str, message: bytes) -> "FakePipeline":
        return self._queue("publish", channel, message)

    async def execute(self) -> list:
        out = [self.redis.apply(*command) for command in self.commands]
        self.redis.executed.extend(self.commands)
        self.redis.journal.extend(("redis", c[0], c[1:]) for c in self.commands)
        self.commands = []
        return out


class FakeScript:
    def __init__(self, source: str) -> None:
        self.source = source

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - not used by agents
        raise AssertionError("the agents are not expected to run Redis scripts")


class FakeRedis:
    """The part of ``redis.asyncio.Redis`` the agents use: non-transactional pipelines
    (sadd/srem/delete/incr/expire) and ``register_script`` (only registered)."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.sets: dict[str, set] = {}
        self.counters: dict[str, int] = {}
        self.values: dict[str, Any] = {}
        self.ttls: dict[str, int] = {}
        self.executed: list[tuple[Any, ...]] = []
        self.scripts: list[FakeScript] = []
        self.published: list[tuple[str, bytes]] = []  # (channel, message) of PUBLISH
        # Channels with a subscriber (PUBSUB NUMSUB); None: every channel has one.
        self.listening: set[str] | None = None

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert transaction is False, "the agents use non-transactional pipelines"
        return FakePipeline(self)

    async def pubsub_numsub(self, *channels: str) -> list[tuple[str, int]]:
        return [(c, int(self.listening is None or c in self.listening)) for c in channels]

    def register_script(self, source: str) -> FakeScript:
        script = FakeScript(source)
        self.scripts.append(script)
        return script

    def apply(self, op: str, key: str, *args: Any) -> Any:
        if op in ("sadd", "srem"):
            members = self.sets.setdefault(key, set())
            (member,) = args
            present = member in members
            if op == "sadd":
                members.add(member)
                return int(not present)
            members.discard(member)
            return int(present)
        if op == "delete":
            found = key in self.sets or key in self.counters or key in self.values
            self.sets.pop(key, None)
            self.counters.pop(key, None)
            self.values.pop(key, None)
            return int(found)
        if op == "set":
            value, ex = args
            self.values[key] = value
            if ex is not None:
                self.ttls[key] = ex
            return True
        if op == "incr":
            self.counters[key] = self.counters.get(key, 0) + 1
            return self.counters[key]
        if op == "expire":
            self.ttls[key] = args[0]
            return 1
        if op == "publish":
            self.published.append((key, args[0]))
            return 0
        raise AssertionError(f"FakeRedis does not model {op!r}")  # pragma: no cover

    def commands(self, op: str) -> list[tuple[Any, ...]]:
        return [c for c in self.executed if c[0] == op]


class FakeTimelines:
    """``RedisTimelines.push_many/unpush_many/invalidate``, recorded."""

    def __init__(self, journal: Journal | None = None, name: str = "timelines") -> None:
        self.journal = journal if journal is not None else []
        self.name = name
        self.pushes: list[dict[int, list[tuple[int, int]]]] = []
        self.unpushes: list[dict[int, list[tuple[int, int]]]] = []
        self.invalidations: list[list[int]] = []

    async def push_many(self, adds: dict[int, Sequence[tuple[int, int]]]) -> None:
        self.pushes.append({u: sorted(e) for u, e in adds.items()})
        self.journal.append((self.name, "push_many", self.pushes[-1]))

    async def unpush_many(self, removes: dict[int, Sequence[tuple[int, int]]]) -> None:
        self.unpushes.append({u: sorted(e) for u, e in removes.items()})
        self.journal.append((self.name, "unpush_many", self.unpushes[-1]))

    async def invalidate(self, user_ids: Iterable[int]) -> None:
        self.invalidations.append(sorted(user_ids))
        self.journal.append((self.name, "invalidate", self.invalidations[-1]))

    def pushed(self) -> dict[int, set[tuple[int, int]]]:
        out: dict[int, set[tuple[int, int]]] = {}
        for call in self.pushes:
            for u, entries in call.items():
                out.setdefault(u, set()).update(entries)
        return out

    def unpushed(self) -> dict[int, set[tuple[int, int]]]:
        out: dict[int, set[tuple[int, int]]] = {}
        for call in self.unpushes:
            for u, entries in call.items():
                out.setdefault(u, set()).update(entries)
        return out

    def invalidated(self) -> set[int]:
        return {u for call in self.invalidations for u in call}


class FakeTweets:
    """``RedisTweets.write``, recorded."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.writes: list[tuple[list, list]] = []

    async def write(self, posted: Iterable[tuple], deleted: Iterable[tuple]) -> None:
        self.writes.append((list(posted), list(deleted)))
        self.journal.append(("tweets", "write", self.writes[-1]))

    async def read(self, tweet_ids: Iterable[int]) -> dict[int, None]:
        """``RedisTweets.read`` (stage 2's live notice items): every body a miss, so notices carry none."""
        return dict.fromkeys(tweet_ids)


class FakeClaims:
    """``TweetClaims.claim`` over a dict: the first post of an id is kept (PostgreSQL's
    ``tweets`` rows, without the projection's columns)."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.winners: dict[int, StoredTweet] = {}
        self.calls: list[list[tuple[int, int, str, int]]] = []

    async def claim(self, posts: Sequence[tuple[int, int, str, int]]) -> dict[int, StoredTweet]:
        posts = list(posts)
        assert len({p[0] for p in posts}) == len(posts), "claims take distinct ids"
        self.calls.append(posts)
        self.journal.append(("postgres", "claim", tuple(p[0] for p in posts)))
        for post in posts:
            self.winners.setdefault(post[0], StoredTweet(*post))
        return {p[0]: self.winners[p[0]] for p in posts}


class FakeCelebrities:
    """``RedisCelebrities.update`` over a set (the cache loaded from the start)."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.members: set[int] = set()

    async def update(self, changes: Iterable[tuple[int, bool]]) -> None:
        for author_id, celebrity in changes:
            (self.members.add if celebrity else self.members.discard)(author_id)
            self.journal.append(("celebrities", "add" if celebrity else "remove", author_id))


def make_sinks(s: Any = settings, journal: Journal | None = None) -> Sinks:
    """The real ``Sinks`` container holding fakes."""
    redis = FakeRedis(journal)
    return Sinks(
        settings=s,
        cassandra=FakeCassandra(journal),  # type: ignore[arg-type]
        claims=FakeClaims(journal),  # type: ignore[arg-type]
        redis=redis,  # type: ignore[arg-type]
        timelines=FakeTimelines(journal),  # type: ignore[arg-type]
        author_windows=FakeTimelines(journal, "author_windows"),  # type: ignore[arg-type]
        tweets=FakeTweets(journal),  # type: ignore[arg-type]
        celebrities=FakeCelebrities(journal),  # type: ignore[arg-type]
        following=RedisFollowing(redis, prefix=s.redis_prefix, ttl_s=s.timeline_ttl_s),  # type: ignore[arg-type]
        live=LiveChannels(redis, prefix=s.redis_prefix),  # type: ignore[arg-type]
    )


# --- what the Outbox publishes -------------------------------------------------------


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None
    force: bool


@dataclass
class SentLog:
    """Stands in for ``Topic.send``: records the send and returns an acked future."""

    sent: list[Sent] = field(default_factory=list)
    journal: Journal = field(default_factory=list)
    crash_on_next_send_to: str | None = None  # that topic's next send raises SimulatedCrash

    async def send(self, topic: Any, *, key: Any = None, value: Any = None, partition: int | None = None,
                   force: bool = False, **kwargs: Any) -> asyncio.Future:
        if self.crash_on_next_send_to == topic.get_topic_name():
            self.crash_on_next_send_to = None
            raise SimulatedCrash("worker died before the batch was published")
        self.sent.append(Sent(topic.get_topic_name(), key, value, partition, force))
        self.journal.append(("kafka", self.sent[-1].topic, partition))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def install(self, monkeypatch: pytest.MonkeyPatch) -> "SentLog":
        log = self

        async def send(self_topic: Any, *args: Any, **kwargs: Any) -> asyncio.Future:
            assert not args, "Outbox sends with keyword arguments only"
            return await log.send(self_topic, **kwargs)

        monkeypatch.setattr("faust.topics.Topic.send", send)
        return self

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    def delivery_messages(self) -> list[tuple[int, list[dict]]]:
        """(partition, ops) of each delivery message, in send order."""
        out = []
        for s in self.on(settings.topic_deliveries):
            assert s.force is True
            assert s.key == encode_key(s.partition), "a delivery message is keyed by its partition"
            out.append((s.partition, orjson.loads(s.value)["ops"]))
        return out

    def delivery_ops(self, kind: str | None = None) -> list[tuple[int, dict]]:
        return [(p, op) for p, ops in self.delivery_messages() for op in ops if kind is None or op["op"] == kind]

    def dead_letters(self) -> list[dict]:
        return [orjson.loads(s.value) for s in self.on(settings.topic_dead_letters)]

    def clear(self) -> None:
        self.sent.clear()


# --- messages and the agent driver -----------------------------------------------------


@dataclass(frozen=True)
class Msg:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int


def msg_for(topic: str, key_id: int, value: Any, *, partition: int | None = None) -> Msg:
    """A message as a correct producer sends it: decimal key, murmur2 partition."""
    raw = value if isinstance(value, (bytes, type(None))) else (
        orjson.dumps(value) if isinstance(value, dict) else encode(value)
    )
    if partition is None:
        partition = partition_for_id(key_id, settings.topic_partitions)
    return Msg(topic, encode_key(key_id), raw, partition)


def id_on_other_partition(partition: int, start: int = 1) -> int:
    """The smallest id >= start whose messages do not go to ``partition``."""
    i = start
    while partition_for_id(i, settings.topic_partitions) == partition:
        i += 1
    return i


async def wait_for_batch(tc: AgentTestWrapper, done: asyncio.Event) -> None:
    """Until ``done`` is set; raises if the agent crashed first or nothing happens in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BATCH_TIMEOUT_S
    while not done.is_set():
        if tc._crash_reason is not None:
            raise tc._crash_reason
        if loop.time() > deadline:
            raise TimeoutError("the agent did not process the batch")
        await asyncio.sleep(0.005)


async def put_messages(tc: AgentTestWrapper, messages: Sequence[Msg]) -> None:
    """Put ``messages`` into a test context without waiting for them to be processed."""
    current: list[Msg] = []

    def to_message(key: Any, value: Any, **kwargs: Any) -> Any:
        # test_context names every message after the agent's channel, which has
        # two topics here ("<internal>"): give each message its real topic.
        message = AgentTestWrapper.to_message(tc, key, value, **kwargs)
        message.topic = current[0].topic
        message.tp = TP(message.topic, message.partition)
        return message

    tc.to_message = to_message  # type: ignore[method-assign]
    for m in messages:
        current[:] = [m]
        await tc.put(value=m.value, key=m.key, partition=m.partition, wait=False)


class AgentDriver:
    """Runs batches through ``agent`` (``agent.test_context()``), one test context per batch.
    ``begin_fn``: the module's function that begins a batch whose writes go on in the
    background (``agents/loop.consume``'s overlap), when the agent overlaps batches: a batch
    is done when its writes are."""

    def __init__(self, agent: Any, module: ModuleType, batch_fn: str, monkeypatch: pytest.MonkeyPatch,
                 begin_fn: str | None = None) -> None:
        self.agent = agent
        self.module = module
        self.batch_fn = batch_fn
        self.begin_fn = begin_fn
        self.monkeypatch = monkeypatch
        self.batches: list[list[tuple[str, int, bytes | None]]] = []  # what each batch contained
        self._original = getattr(module, batch_fn)
        self._original_begin = getattr(module, begin_fn) if begin_fn is not None else None

    async def run(self, messages: Sequence[Msg]) -> None:
        assert messages
        done = asyncio.Event()
        errors: list[BaseException] = []
        original = self._original
        batches = self.batches

        async def recording(sinks: Any, events: Sequence[Any]) -> None:
            batches.append([(e.message.topic, e.message.partition, e.message.value) for e in events])
            try:
                await original(sinks, events)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test
                errors.append(exc)
                raise
            finally:
                done.set()

        original_begin = self._original_begin

        async def recording_begin(sinks: Any, events: Sequence[Any]) -> Any:
            batches.append([(e.message.topic, e.message.partition, e.message.value) for e in events])
            try:
                begun = await original_begin(sinks, events)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test
                errors.append(exc)
                done.set()
                raise
            writes = begun[0]  # (the future of its writes, the future of "the next may begin")

            def written(f: Any) -> None:
                if f.cancelled() or f.exception() is not None:
                    errors.append(asyncio.CancelledError() if f.cancelled() else f.exception())
                done.set()

            writes.add_done_callback(written)
            return begun

        # The agent's batches are read when it starts: exactly len(messages) make them
        # one batch (drain_batches would otherwise hand over the first ones at once).
        self.monkeypatch.setattr(self.module, self.batch_fn, recording)
        if original_begin is not None:
            self.monkeypatch.setattr(self.module, self.begin_fn, recording_begin)
        one_batch(self.monkeypatch, self.module, len(messages))
        try:
            async with self.agent.test_context() as tc:
                await put_messages(tc, messages)
                await wait_for_batch(tc, done)
        finally:
            self.monkeypatch.setattr(self.module, self.batch_fn, original)
            if original_begin is not None:
                self.monkeypatch.setattr(self.module, self.begin_fn, original_begin)
        if errors:
            raise errors[0]
        sent = [(m.topic, m.partition, m.value) for m in messages]
        assert self.batches[-1] == sent, "the messages were not processed as one batch"


def one_batch(monkeypatch: pytest.MonkeyPatch, module: ModuleType, n: int) -> None:
    """The agent of ``module`` takes its next ``n`` messages as one batch."""
    monkeypatch.setattr(module, "BATCH_MAX", n)
    monkeypatch.setattr(agent_loop, "drain_batches",
                        lambda stream, max_, **kw: drain_batches(stream, max_, min_=max_, **kw))


# --- fixtures --------------------------------------------------------------------------


def reset_tables() -> None:
    for table in TABLES:
        store = table.data
        assert type(store).__module__ == "faust.stores.memory", f"{table.name} is not in memory: {store!r}"
        store._clear()
    import agents.deliver  # its cache of recipients rows mirrors a table just emptied
    import agents.fanout  # its followers' groups too

    agents.deliver.RECIPIENTS.clear()
    agents.deliver.MARKS.clear()
    agents.deliver._LAST_WRITES = None
    agents.fanout.PLANS.clear()


def close_consumer_thread_loop() -> None:
    """Iterating a stream creates ``app.consumer``, whose (never started) consumer
    thread owns an event loop and its self-pipe sockets; close them rather than
    leave them to the garbage collector (a ResourceWarning, an error in this repo)."""
    consumer = app._consumer
    thread = getattr(consumer, "_thread", None) if consumer is not None else None
    loop = getattr(thread, "thread_loop", None)
    if loop is not None and not loop.is_closed() and not loop.is_running():
        loop.close()


@pytest.fixture(scope="module")
def faust_test_app() -> Any:
    app.finalize()
    app.flow_control.resume()
    yield app
    close_consumer_thread_loop()


@pytest.fixture
def sinks(faust_test_app: Any, journal: Journal, monkeypatch: pytest.MonkeyPatch) -> Sinks:
    """Fresh fakes (installed as the process's sinks) and empty tables for each test."""
    reset_tables()
    fake = make_sinks(journal=journal)
    monkeypatch.setattr(agent_sinks, "_sinks", fake)
    return fake


@pytest.fixture
def sent(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> SentLog:
    return SentLog(journal=journal).install(monkeypatch)


@pytest.fixture
def journal() -> Journal:
    return []


def first(journal: Journal, store: str, *what: str) -> int:
    """Index of the first journal entry of ``store`` (with ``what`` if given); -1 if none."""
    for i, (s, w, _) in enumerate(journal):
        if s == store and (not what or w in what):
            return i
    return -1


def last(journal: Journal, store: str, *what: str) -> int:
    """Index of the last journal entry of ``store`` (with ``what`` if given); -1 if none."""
    for i in range(len(journal) - 1, -1, -1):
        s, w, _ = journal[i]
        if s == store and (not what or w in what):
            return i
    return -1

