"""What clients need, end to end: since_id, the live stream (SSE) and read markers.

One isolated world (own topics, keyspace, schema, Redis prefix, a real Faust worker) and
the query service under a real uvicorn server on a free port, so the stream is read over
real HTTP as a client reads it. Celebrity at 3 followers, so one author of every test is
pulled. Every expectation comes from the reference (``policies.reference``) over the log.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import orjson
import pytest
import pytest_asyncio
import uvicorn
from redis.asyncio import Redis

from localenv.worker import Worker
from policies.timeline import decode_cursor
from query.service import create_app
from tests.integration.pipeline_harness import drop, isolated_settings, provision
from tests.integration.post_fixtures import delete_topics
from tests.integration.test_query_service import DAY_MS, User, World, followed, ids_of

pytestmark = [pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_asyncio.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("live")
    settings = isolated_settings(tmp, celebrity_threshold=3, celebrity_hysteresis=1, timeline_cap=12,
                                 backfill_limit=6, inactive_after_ms=DAY_MS)
    await asyncio.to_thread(provision, settings)
    worker = Worker(settings, tmp / "worker.log").start()
    app = create_app(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    serving = asyncio.get_running_loop().create_task(server.serve())
    redis = Redis.from_url(settings.redis_url)
    start = time.time_ns() // 1_000_000 - 20 * DAY_MS
    try:
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            w = World(settings, worker, client, app, redis, clock_ms=start)
            yield w
            if w.accounts:
                async with app.state.resources.pg_conn() as conn:
                    await conn.execute("DELETE FROM users WHERE user_id = ANY(%s)", (w.accounts,))
                    await conn.execute("DELETE FROM timeline_markers WHERE user_id = ANY(%s)", (w.accounts,))
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 10)
        worker.stop()
        await redis.aclose()
        await asyncio.to_thread(drop, settings)  # its Redis keys too
        with contextlib.suppress(Exception):
            await delete_topics(settings)


async def _reader_with_celebrity(w: World) -> tuple[User, list[User], User]:
    """A reader following two pushed authors and one celebrity (3 followers)."""
    reader, fans = await w.user(), [await w.user(account=False) for _ in range(2)]
    pushed = [await w.user() for _ in range(2)]
    celeb = await w.user()
    events = [followed(reader.user_id, a.user_id, w.tick()) for a in (*pushed, celeb)]
    events += [followed(f.user_id, celeb.user_id, w.tick()) for f in fans]
    await w.publish(events)
    return reader, pushed, celeb


def newer(w: World, user: User, since: int) -> list[int]:
    return [t for t in w.reference(user) if t > since]


async def since_all(w: World, user: User, since: int, limit: int) -> list[int]:
    ids: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit, "since_id": str(since)}
        if cursor:
            params["cursor"] = cursor
        body = await w.home_page(user, **params)
        assert len(body["data"]) <= limit
        ids += ids_of(body)
        cursor = body["meta"]["next_cursor"]
        if cursor is None:
            return ids
        assert decode_cursor(cursor) == ids[-1]


async def test_since_id_is_the_reference_newer_than_n_with_deletes_and_unfollows(world: World):
    w = world
    reader, pushed, celeb = await _reader_with_celebrity(w)
    tweets = [w.tweet([*pushed, celeb][i % 3]) for i in range(15)]
    await w.publish(tweets)
    since = tweets[4]["tweet_id"]
    want = newer(w, reader, since)
    assert len(want) == 10
    assert await since_all(w, reader, since, limit=3) == want  # a gap larger than limit is paged
    count = (await w.client.get(f"/v1/users/{reader.user_id}/timelines/home/count",
                                params={"since_id": str(since)}, headers=reader.auth)).json()
    assert count == {"since_id": str(since), "count": 10, "capped": False, "newest_id": str(want[0])}

    await w.publish([w.deleted(tweets[7]), w.deleted(tweets[8]),  # a pushed and a celebrity tweet
                     {"type": "unfollowed", "follower_id": reader.user_id, "followee_id": pushed[0].user_id,
                      "at": w.tick()}])
    want = newer(w, reader, since)
    assert len(want) == 5
    assert await since_all(w, reader, since, limit=2) == want
    assert await since_all(w, reader, want[0], limit=2) == []

    # The author timeline too.
    author = pushed[1]
    own = [t["tweet_id"] for t in tweets if t["author_id"] == author.user_id and t is not tweets[7]]
    resp = await w.client.get(f"/v1/users/{author.user_id}/tweets", params={"since_id": str(own[-1] - 1)})
    assert ids_of(resp.json()) == [own[-1]]
    resp = await w.client.get(f"/v1/users/{author.user_id}/tweets/count", params={"since_id": str(own[0])})
    assert resp.json()["count"] == len(own) - 1

    bad = await w.client.get(f"/v1/users/{reader.user_id}/timelines/home", params={"since_id": "x"},
                             headers=reader.auth)
    assert bad.status_code == 400 and bad.json()["type"].endswith("invalid-since-id")


class Sse:
    """A client's view of one stream: events as (event, id, data) until closed."""

    def __init__(self, w: World, user: User, last_event_id: str | None = None) -> None:
        self.w, self.user, self.last_event_id = w, user, last_event_id
        self.events: asyncio.Queue[tuple[str, str | None, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.status: int | None = None

    async def open(self) -> "Sse":
        opened = asyncio.Event()

        async def run() -> None:
            headers = dict(self.user.auth)
            if self.last_event_id:
                headers["Last-Event-ID"] = self.last_event_id
            url = f"/v1/users/{self.user.user_id}/timelines/home/stream"
            async with self.w.client.stream("GET", url, headers=headers, timeout=None) as resp:
                self.status = resp.status_code
                opened.set()
                event, eid, data = "message", None, None
                async for line in resp.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("id: "):
                        eid = line[4:]
                    elif line.startswith("data: "):
                        data = orjson.loads(line[6:])
                    elif line == "" and data is not None:
                        if eid is not None:
                            self.last_event_id = eid
                        await self.events.put((event, eid, data))
                        event, eid, data = "message", None, None

        self.task = asyncio.get_running_loop().create_task(run())
        await asyncio.wait_for(opened.wait(), 10)
        return self

    async def next(self, timeout: float = 15.0) -> tuple[str, str | None, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def close(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


async def tweets_until(sse: Sse, n: int, got: list[int], deletes: list[dict]) -> None:
    while len(got) < n:
        event, _, data = await sse.next()
        if event == "tweet":
            got.append(int(data["tweet_id"]))
        elif event == "delete":
            deletes.append(data)
        else:
            assert event == "ready", (event, data)


async def test_stream_sends_exactly_the_reference_new_tweets_in_order_across_a_reconnect(world: World):
    w = world
    reader, pushed, celeb = await _reader_with_celebrity(w)
    await w.publish([w.tweet(pushed[0]), w.tweet(celeb)])
    before = w.reference(reader)
    sse = await Sse(w, reader).open()
    assert sse.status == 200
    event, ready_id, data = await sse.next()
    assert event == "ready" and data == {"since_id": str(before[0])} and ready_id

    got: list[int] = []
    deletes: list[dict] = []
    # Each burst: the celebrity's tweet first (the smallest id): stage 1 tells before stage 2.
    burst1 = [w.tweet(celeb), w.tweet(pushed[0]), w.tweet(pushed[1])]
    started = time.perf_counter()
    await w.publish(burst1)
    await tweets_until(sse, 3, got, deletes)
    assert time.perf_counter() - started < 30

    await sse.close()  # forced reconnect; tweets land meanwhile
    burst2 = [w.tweet(celeb), w.tweet(pushed[1]), w.tweet(pushed[0])]
    await w.publish(burst2)
    sse = await Sse(w, reader, sse.last_event_id).open()
    await tweets_until(sse, 6, got, deletes)
    burst3 = [w.tweet(celeb), w.tweet(pushed[1])]
    await w.publish(burst3)
    await tweets_until(sse, 8, got, deletes)

    want = [t for t in w.reference(reader) if t > before[0]]
    assert got == sorted(want), "every new tweet once, in order"
    assert not deletes

    # A shown tweet deleted, a celebrity's deleted, an author unfollowed: delete events.
    await w.publish([w.deleted(burst3[1]), w.deleted(burst3[0]),
                     {"type": "unfollowed", "follower_id": reader.user_id, "followee_id": pushed[0].user_id,
                      "at": w.tick()}])
    seen: list[dict] = []
    while not ({"tweet_id": str(burst3[1]["tweet_id"]), "author_id": str(pushed[1].user_id),
                "reason": "deleted"} in seen
               and {"tweet_id": str(burst3[0]["tweet_id"]), "author_id": str(celeb.user_id),
                    "reason": "deleted"} in seen
               and {"author_id": str(pushed[0].user_id), "reason": "unfollowed"} in seen):
        event, _, data = await sse.next()
        assert event == "delete", (event, data)
        seen.append(data)
    await sse.close()

    # Resuming from the last event id after the deletes: nothing new, the gone tweets removed.
    sse = await Sse(w, reader, sse.last_event_id).open()
    assert (await sse.next())[0] == "ready"
    removed = set()
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            event, _, data = await sse.next(timeout=2)
            assert event == "delete" and data["reason"] == "removed", (event, data)
            removed.add(int(data["tweet_id"]))
    assert removed <= {t for t in got if t not in w.reference(reader)}
    await sse.close()


async def test_a_user_cannot_open_another_users_stream(world: World):
    w = world
    owner, other = await w.user(), await w.user()
    url = f"/v1/users/{owner.user_id}/timelines/home/stream"
    resp = await w.client.get(url, headers=other.auth)
    assert resp.status_code == 403 and resp.headers["content-type"].startswith("application/problem+json")
    resp = await w.client.get(url)
    assert resp.status_code == 401
    resp = await w.client.get(url, headers={**owner.auth, "Last-Event-ID": "garbage"})
    assert resp.status_code == 400


async def test_markers_never_move_backwards(world: World):
    w = world
    user, other = await w.user(), await w.user()
    url = f"/v1/users/{user.user_id}/markers"
    assert (await w.client.get(url, headers=user.auth)).json() == {}
    assert (await w.client.get(url, headers=other.auth)).status_code == 403

    async def put(last: int, version: int | None = None) -> httpx.Response:
        body: dict[str, Any] = {"last_read_id": str(last)}
        if version is not None:
            body["version"] = version
        return await w.client.put(f"{url}/home", json=body, headers=user.auth)

    # Two devices racing: whatever the order, the newest read position wins.
    writes = [100 + (i * 37) % 50 for i in range(30)]
    results = await asyncio.gather(*(put(x) for x in writes))
    assert {r.status_code for r in results} <= {200, 409}
    marker = (await w.client.get(url, headers=user.auth)).json()["home"]
    assert marker["last_read_id"] == str(max(writes))

    stale = await put(max(writes) - 1)
    assert stale.status_code == 409 and stale.json()["marker"]["last_read_id"] == str(max(writes))
    back = await put(5, version=marker["version"])  # on purpose, at the current version
    assert back.status_code == 200 and back.json()["last_read_id"] == "5"
    assert back.json()["version"] == marker["version"] + 1
    assert (await put(500, version=marker["version"])).status_code == 409  # that version is gone
    assert (await w.client.get(url, headers=user.auth)).json()["home"]["last_read_id"] == "5"


async def test_a_notice_carrying_items_is_sent_without_a_read_and_falls_back_when_unsure(world: World):
    """The fast path: a notice whose items are ready is sent as it is (a fabricated tweet that no
    read could find arrives: no read was made); the same notice with a rebuilt timeline, or
    without its items, makes the stream read instead (the fabricated tweet never arrives), and
    a real tweet still arrives after either."""
    from policies.stream import Notice, encode_notice
    from sinks.redis_live import LiveChannels

    w = world
    reader, author = await w.user(), await w.user()
    await w.publish([followed(reader.user_id, author.user_id, w.tick())])
    sse = await Sse(w, reader).open()
    assert (await sse.next())[0] == "ready"
    channel = LiveChannels(w.redis, prefix=w.settings.redis_prefix).user(reader.user_id)
    tail = b',"text":"made up","created_at":null}'
    fake = [w.tweet(author)["tweet_id"] for _ in range(3)]  # ids only: never posted

    got: list[int] = []
    deletes: list[dict] = []
    await w.redis.publish(channel, encode_notice(Notice(added=((fake[0], author.user_id),),
                                                        items=((fake[0], author.user_id, tail),))))
    await tweets_until(sse, 1, got, deletes)
    assert got == [fake[0]], "the fast path sends what the notice carried"

    await w.redis.publish(channel, encode_notice(Notice(added=((fake[1], author.user_id),),
                                                        items=((fake[1], author.user_id, tail),), reset=True)))
    await w.redis.publish(channel, encode_notice(Notice(added=((fake[2], author.user_id),))))
    real = w.tweet(author)
    await w.publish([real])
    await tweets_until(sse, 2, got, deletes)
    assert got == [fake[0], real["tweet_id"]], "unsure notices were read: the fabricated tweets never came"
    # The read did not find the fabricated tweet sent by the fast path: it is withdrawn.
    assert {"tweet_id": str(fake[0]), "reason": "removed"} in deletes
    await sse.close()


async def test_a_celebrity_notice_carrying_items_is_sent_without_a_read(world: World):
    """Stage 1's notices on a celebrity's channel carry the pulled tweets' items: a fabricated
    one (no read could find it) arrives, so the stream sends such items without a read; and a
    real pulled tweet, posted through the pipeline, arrives with no stream read at all."""
    from policies.stream import Notice, encode_notice
    from sinks.redis_live import LiveChannels

    w = world
    reader, _, celeb = await _reader_with_celebrity(w)
    sse = await Sse(w, reader).open()
    assert (await sse.next())[0] == "ready"
    channel = LiveChannels(w.redis, prefix=w.settings.redis_prefix).author(celeb.user_id)
    fake = w.tweet(celeb)["tweet_id"]  # an id only: never posted
    got: list[int] = []
    deletes: list[dict] = []

    def delays() -> tuple[float, float]:
        histogram = w.app.state.metrics.live_event_delay
        samples = {s.name.rsplit("_", 1)[1]: s.value for m in histogram.collect() for s in m.samples
                   if s.name.endswith(("_count", "_sum"))}
        return samples["count"], samples["sum"]

    before = delays()
    await w.redis.publish(channel, encode_notice(Notice(
        added=((fake, celeb.user_id),), items=((fake, celeb.user_id, b',"text":"made up","created_at":null}'),),
        pulled=True)))
    await tweets_until(sse, 1, got, deletes)
    assert got == [fake], "the celebrity's notice was sent as it came"

    def stream_reads() -> float:
        histogram = w.app.state.metrics.live_reads
        return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count"))

    reads = stream_reads()
    assert delays() == before, "a notice without its publish time (the fabricated one) is not measured"
    real = w.tweet(celeb)
    await w.publish([real])
    await tweets_until(sse, 2, got, deletes)
    assert got == [fake, real["tweet_id"]]
    assert stream_reads() == reads, "stage 1's notice carried the pulled tweet: the stream did not read"
    for _ in range(100):  # observed right after the send returned
        if delays()[0] > before[0]:
            break
        await asyncio.sleep(0.02)
    count, total = delays()
    assert count == before[0] + 1 and 0 <= total - before[1] < 30, "the pulled tweet's delay, from stage 1's notice"
    await sse.close()


async def _raw_stream(w: World, user: User, *, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream over a raw socket (a client that can stop reading), past its ready event."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(w.client.base_url.port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    auth = user.auth["Authorization"]
    writer.write(f"GET /v1/users/{user.user_id}/timelines/home/stream HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: {auth}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"event: ready"), 10)
    assert b" 200 " in head.split(b"\r\n", 1)[0], head[:200]
    return reader, writer


async def test_a_silent_stream_gets_heartbeats_and_one_whose_client_stops_reading_is_cut(
        world: World, monkeypatch: pytest.MonkeyPatch):
    """The clocks are the hub's sweep, not timers per stream: a stream with nothing to send gets
    a comment line once it was silent for HEARTBEAT_S; a stream whose client stopped reading
    (its socket buffers full, the send blocked) is closed after SEND_TIMEOUT_S, counted as
    ``send_timeout``, without holding what it could not send."""
    import query.live
    import query.stream
    from policies.stream import Notice, encode_notice
    from sinks.redis_live import LiveChannels

    monkeypatch.setattr(query.live, "TICK_S", 0.1)
    monkeypatch.setattr(query.stream, "HEARTBEAT_S", 0.5)
    monkeypatch.setattr(query.stream, "SEND_TIMEOUT_S", 1.0)
    await asyncio.sleep(1.1)  # the sweep's current sleep (1 s) ends: it runs every 0.1 s now
    w = world
    quiet, stuck, author = await w.user(), await w.user(), await w.user()

    reader, writer = await _raw_stream(w, quiet)
    seen = b""
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        with contextlib.suppress(asyncio.TimeoutError):
            seen += await asyncio.wait_for(reader.read(4096), end - time.monotonic())
    writer.close()
    assert seen.count(b": keepalive\n\n") >= 2, seen
    assert b"event: tweet" not in seen

    def cuts() -> float:
        return w.app.state.metrics.registry.get_sample_value("timeline_live_closed_total",
                                                             {"reason": "send_timeout"}) or 0.0

    cuts_before = cuts()
    reader, writer = await _raw_stream(w, stuck, rcvbuf=4096)
    channel = LiveChannels(w.redis, prefix=w.settings.redis_prefix).user(stuck.user_id)
    tail = b',"text":"' + b"x" * 8000 + b'","created_at":null}'
    for _ in range(400):  # ~3 MB of tweet events the client never reads
        tid = w.tweet(author)["tweet_id"]
        await w.redis.publish(channel, encode_notice(Notice(added=((tid, author.user_id),),
                                                            items=((tid, author.user_id, tail),))))
    deadline = time.monotonic() + 15
    while cuts() == cuts_before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert cuts() == cuts_before + 1, "the blocked stream was cut"
    received = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), 10):  # the server closed it: EOF
            received += len(chunk)
    writer.close()
    assert received < 400 * 8000, "what could not be sent was dropped, not held for the client"
