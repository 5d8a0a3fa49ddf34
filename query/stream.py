"""The home timeline's live stream: Server-Sent Events, private to the timeline's owner.

    GET /v1/users/{user_id}/timelines/home/stream[?since_id=N]   (Bearer, own timeline only)
    Last-Event-ID: <the id of the last event received>             (on a reconnect)

Authenticated and authorized like the home read (401, 403, 429 before the stream
starts). Then ``200 text/event-stream`` and these events (``data`` is one line of JSON):

* ``ready`` (id: the starting position) - once, first;
* ``tweet`` (id: the position after it) - a tweet that landed in the timeline, as a page
  item (``tweet_id``, ``author_id``, ``author_handle``, ``text``, ``created_at``), oldest
  first within a burst;
* ``delete`` (no id) - ``{"tweet_id", "author_id", "reason": "deleted"}`` when a tweet was
  deleted, ``{"author_id", "reason": "unfollowed"}`` when the user unfollowed its author
  (drop every tweet of that author), ``{"tweet_id", "author_id", "reason": "removed"}``
  for a tweet sent on this stream that a read no longer finds;
* ``reset`` (then the stream ends) - ``{"reason", "detail"}``: the stream fell behind
  (``behind``: more than ``MAX_CATCH_UP`` tweets to send, or too many delete events
  waiting); reload the top of the timeline and reconnect without ``Last-Event-ID``;
* a comment line after ``HEARTBEAT_S`` without a send (keeps proxies from closing an idle
  stream).

Where a stream starts: ``Last-Event-ID`` (a reconnect: resume after the last event, no
gap, no duplicate; ``policies/stream.py``), else ``since_id`` (the newest tweet the client
shows), else the newest tweet of the timeline now. What a stream sends is read from the
timeline (``HomeTimelineReader.page(above=...)``), woken by the pipeline's notices
(``query/live.py``); a send that blocks longer than ``SEND_TIMEOUT_S`` (a client that does
not read) closes the connection: nothing is buffered for it beyond the socket's buffer.

The clocks (heartbeat, send timeout, the user's activity mark) are not timers of each stream:
the hub sweeps every open stream once a second, a tenth of them every 0.1 s (``LiveHub``
calls :meth:`LiveStream.tick`, ``policies.stream.timers_due`` decides). A timeout per wait
and per send cost ~10 us each, two per stream event, a fifth of the process's CPU per event;
the sweep costs ~0.2-0.5 us per stream and second.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.errors import Problem
from api.openapi import header_param, id_path, operation
from policies.stream import (
    MAX_CATCH_UP, MAX_PENDING, NOTHING_DUE, Item, Notice, Position, PositionError, decode_position, encode_position,
    frame, gone, plan_wake, react, timers_due, tweet_frames, unsent,
)
from query.deps import QueryResources, get_query_resources
from query.page import ReadStats, Tweet
from query.params import SINCE_PARAM, parse_since_id
from schemas.events import INT64_MAX as MAX_ID
from schemas.tweet_json import render_handle, render_item, render_tail

log = logging.getLogger(__name__)
router = APIRouter()

HEARTBEAT_S = 15.0
SEND_TIMEOUT_S = 10.0
ACTIVITY_EVERY_S = 240.0  # a user_active mark while a stream is open (stage 2 keeps delivering)
READ_PAGE = 20  # a wake reads a few tweets: a small window keeps the read (and its bodies) small


class LiveStream:
    """One open stream: its position, and what the pipeline told it since it last looked."""

    def __init__(self, res: QueryResources, user_id: int, position: Position | None) -> None:
        self.res = res
        self.user_id = user_id
        self.position = position
        self.wake = asyncio.Event()
        self.read_due = False  # a notice since the last read (one during the first read counts)
        self.pending: list[dict[str, str]] = []
        self.ready: list[Item] = []  # written tweets the notices carried (sent without a read if sure)
        self.fast_sends = 0  # wakes served without a read (tests, metrics)
        self.resubscribe = False
        self.closed = False
        self.behind: str | None = None
        self.authors: set[int] = set()
        self.noticed_at: float | None = None  # the oldest notice of added tweets since the last send
        # Clocks (time.monotonic), checked by the hub's sweep (tick): see the module's doc.
        self.last_sent = self.last_active = time.monotonic()
        self.sending_since: float | None = None
        self.heartbeat_due = self.activity_due = False
        self.task: asyncio.Task | None = None  # the response's, once it runs (cut on a send timeout)
        self.cut = False

    # --- notices (called by the hub) ---
    def notify(self, notice: Notice) -> None:
        reaction = react(notice)
        self.read_due = self.read_due or reaction.read
        self.resubscribe = self.resubscribe or reaction.resubscribe
        self.ready.extend(reaction.items)
        if notice.added and notice.sent_at:
            self.noticed_at = min(self.noticed_at or notice.sent_at, notice.sent_at)
        self.pending.extend(reaction.deletes)
        if len(self.pending) > MAX_PENDING:
            self.behind = f"more than {MAX_PENDING} delete events waiting"
            self.pending.clear()
        self.wake.set()

    def tick(self, now: float) -> None:
        """The hub's sweep: a heartbeat or an activity mark due wakes the stream; a send blocked
        for ``SEND_TIMEOUT_S`` cancels its task (``EventStream`` closes the connection)."""
        due = timers_due(self.last_sent, self.sending_since, self.last_active, now,
                         HEARTBEAT_S, SEND_TIMEOUT_S, ACTIVITY_EVERY_S)
        if due is NOTHING_DUE:
            return
        if due.cut:
            if self.task is not None and not self.cut:
                self.cut = True
                self.task.cancel()
        else:  # a heartbeat, an activity mark or both
            self.heartbeat_due = self.heartbeat_due or due.heartbeat
            self.activity_due = self.activity_due or due.activity
            self.wake.set()

    # --- subscriptions ---
    def channels(self) -> list[str]:
        live = self.res.live.channels
        return [live.user(self.user_id), *(live.author(a) for a in sorted(self.authors))]

    async def followed_celebrities(self) -> set[int]:
        view = await self.res.reader().views.open(self.user_id, MAX_ID, 1, ReadStats())
        return set(view.celebrities)

    async def subscribe(self) -> None:
        hub = self.res.live
        authors = await self.followed_celebrities()
        dropped = [hub.channels.author(a) for a in self.authors - authors]
        added = [hub.channels.author(a) for a in authors - self.authors]
        self.authors = authors
        await hub.subscribe(self, [hub.channels.user(self.user_id), *added])
        if dropped:
            await hub.unsubscribe(self, dropped)

    async def leave(self) -> None:
        await self.res.live.unsubscribe(self, self.channels(), leaving=True)

    # --- reads ---
    async def read_since(self, floor: int) -> list[Tweet] | None:
        """Every tweet above ``floor``, newest first; None when more than MAX_CATCH_UP."""
        out: list[Tweet] = []
        below = None
        while True:
            page = await self.res.reader().page(self.user_id, limit=READ_PAGE, below=below, above=floor)
            out.extend(page.tweets)
            if page.next_below is None:
                return out
            if len(out) > MAX_CATCH_UP:
                return None
            below = page.next_below

    async def start(self) -> bytes:
        """The ``ready`` event, and what landed since the position given (if any)."""
        given = self.position is not None
        if self.position is None:  # no position given: start at the newest tweet now
            page = await self.res.reader().page(self.user_id, limit=1)
            self.position = Position(page.tweets[0].tweet_id if page.tweets else 0)
        ready = frame("ready", orjson.dumps({"since_id": str(self.position.floor)}), encode_position(self.position))
        return ready + (await self.catch_up() if given else b"")

    async def catch_up(self) -> bytes:
        """The frames of what landed since the position (and what left); the position moves."""
        assert self.position is not None
        tweets = await self.read_since(self.position.floor)
        if tweets is None:
            self.behind = f"more than {MAX_CATCH_UP} tweets since the position"
            return b""
        ids = [t.tweet_id for t in tweets]
        removed = gone(self.position, ids)
        fresh = set(unsent(self.position, ids))
        new = [t for t in tweets if t.tweet_id in fresh]
        handles = await self.res.handles.lookup(t.author_id for t in new)
        items = [(t.tweet_id, render_item(t.tweet_id, t.author_id, render_handle(handles.get(t.author_id)),
                                          t.rendered or render_tail(t.text, t.created_at))) for t in new]
        out = [frame("delete", orjson.dumps({"tweet_id": str(t), "reason": "removed"})) for t in removed]
        position = Position(self.position.floor, tuple(t for t in self.position.sent if t not in removed))
        frames, self.position = tweet_frames(items, position)
        return b"".join(out) + frames

    async def send_ready(self, items: list[Item]) -> bytes:
        """The frames of tweets a notice carried (``plan_wake`` chose them); the position moves."""
        assert self.position is not None
        handles = await self.res.handles.lookup(i.author_id for i in items)
        rendered = [(i.tweet_id, render_item(i.tweet_id, i.author_id, render_handle(handles.get(i.author_id)), i.tail))
                    for i in items]
        frames, self.position = tweet_frames(rendered, self.position)
        self.fast_sends += 1
        return frames


class EventStream(Response):
    """The raw ASGI response of one stream (not a StreamingResponse: every send has a timeout)."""

    media_type = "text/event-stream"

    def __init__(self, stream: LiveStream, first: bytes) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.stream = stream
        self.first = first

    async def _send(self, send: Send, body: bytes) -> None:
        # No timeout of its own (module doc): the hub's sweep cuts a send blocked too long.
        stream = self.stream
        stream.sending_since = time.monotonic()
        try:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            stream.sending_since = None
            stream.last_sent = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream, res = self.stream, self.stream.res
        metrics = res.metrics
        watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        stream.task = asyncio.current_task()
        metrics.live_streams.inc()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no")]})
            await self._send(send, b"retry: 2000\n\n" + self.first)
            if stream.behind is not None:
                stream.wake.set()
            await self._loop(send)
        except asyncio.CancelledError:
            if not stream.cut:  # the server's own cancel (shutdown): not ours to swallow
                raise
            if stream.task is not None:
                stream.task.uncancel()
            metrics.live_closed.labels("send_timeout").inc()
            log.info("stream of user %d cut: a send blocked for %s s (the client does not read)",
                     stream.user_id, SEND_TIMEOUT_S)
        except OSError as exc:
            metrics.live_closed.labels("send_timeout").inc()
            log.info("stream of user %d cut: %r", stream.user_id, exc)
        except Exception as exc:  # noqa: BLE001 - a store failed mid-stream: the client reconnects
            metrics.live_closed.labels("error").inc()
            log.warning("stream of user %d ended: %r", stream.user_id, exc)
        finally:
            watcher.cancel()
            metrics.live_streams.dec()
            await stream.leave()

    async def _loop(self, send: Send) -> None:
        stream, res = self.stream, self.stream.res
        while True:
            await stream.wake.wait()  # a notice, the client leaving, or the hub's sweep (tick)
            stream.wake.clear()
            if stream.closed:
                res.metrics.live_closed.labels("client").inc()
                return
            if stream.activity_due:
                stream.activity_due, stream.last_active = False, time.monotonic()
                await res.activity.touch(stream.user_id)
            if stream.heartbeat_due:
                stream.heartbeat_due = False
                await self._send(send, b": keepalive\n\n")
            out = b""
            resubscribed = stream.resubscribe
            if stream.resubscribe:
                stream.resubscribe = False
                async with res.live.reads:
                    await stream.subscribe()
            deletes, stream.pending = stream.pending, []
            ready, stream.ready = stream.ready, []  # what arrives during a read is kept for after it
            noticed, stream.noticed_at = stream.noticed_at, None
            out += b"".join(frame("delete", orjson.dumps(d)) for d in deletes)
            assert stream.position is not None
            wake = plan_wake(stream.position, ready, read_due=stream.read_due, deletes=bool(deletes),
                             resubscribed=resubscribed, celebrities=stream.authors)
            if wake.send and stream.behind is None:
                async with res.live.reads:  # a handle lookup may miss the local map
                    out += await stream.send_ready(wake.send)
            if wake.read and stream.behind is None:
                stream.read_due = False
                started = time.perf_counter()
                async with res.live.reads:
                    out += await stream.catch_up()
                res.metrics.live_reads.observe(time.perf_counter() - started)
            if stream.behind is not None:
                res.metrics.live_closed.labels("behind").inc()
                body = {"reason": "behind", "detail": stream.behind + "; reload the top of the timeline "
                        "(GET .../timelines/home) and reconnect without Last-Event-ID"}
                await self._send(send, out + frame("reset", orjson.dumps(body)))
                return
            if out:
                await self._send(send, out)
                if noticed is not None and b"event: tweet" in out:
                    res.metrics.live_event_delay.observe(max(0.0, time.time() - noticed))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.stream.closed = True
                self.stream.wake.set()
                return


def _start_position(request: Request) -> Position | None:
    raw = request.headers.get("last-event-id")
    if raw is not None and raw.strip():
        try:
            return decode_position(raw)
        except PositionError as exc:
            raise Problem(400, f"Last-Event-ID is not valid ({exc}); send the id of the last event received "
                               "unchanged, or leave the header out", slug="invalid-last-event-id") from None
    since = parse_since_id(request.query_params)
    return Position(since) if since else None


def _described() -> dict:
    spec = operation(params=[SINCE_PARAM, header_param(
        "Last-Event-ID", {"type": "string"}, "On a reconnect: the id of the last event received, unchanged")],
        bearer="required", problems=(400, 401, 403, 422, 429, 503))
    spec["responses"][200] = {"description": "Server-Sent Events: ready, tweet, delete, reset (docs/clients.md)",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    return {**spec, "response_class": EventStream, "status_code": 200}


@router.get("/v1/users/{user_id}/timelines/home/stream", **_described())
async def home_stream(request: Request, user_id: Annotated[str, id_path("The caller's own user id")]) -> Response:
    from query.service import home_owner, refusal  # the home read's checks (that module imports this one)

    res = get_query_resources(request)
    owner = await home_owner(request, user_id)
    position = _start_position(request)
    try:  # opening a stream costs one read token
        allowed = await res.limiter.take(f"user:{owner}")
    except Exception as exc:  # noqa: BLE001 - fails open, as reads do
        log.warning("read rate limit unavailable: %r", exc)
    else:
        if not allowed.allowed:
            raise refusal(res, "stream", allowed.retry_after_s)
    stream = LiveStream(res, owner, position)
    try:
        async with res.live.reads:
            await stream.subscribe()  # before the first read: nothing lands unseen in between
            first = await stream.start()
    except BaseException:
        await stream.leave()
        raise
    await res.activity.touch(owner)
    return EventStream(stream, first)

