"""Stage 2, keyed by recipient: activity, following lists, and timeline writes.

Consumes ``user-activity`` and ``timeline-deliveries`` together (both keyed by
recipient), so whether a recipient is active is a local table read, never a
cross-partition lookup. Per batch:

* walk the events in order, updating the ``recipients`` and ``following_edges``
  tables and collecting the net effect on each timeline row (the last write to a
  row wins, so writes of one batch never race each other);
* rebuilds (a returning user) and backfills (a new follow) read the followees'
  author timelines, which stage 1 wrote before it sent the ops;
* apply the writes in chunks of users (``policies/chunks.py``; several in flight, so
  timelines change progressively): per chunk Cassandra first (the durable timeline), then
  Redis (the cache, only where a cached timeline exists), then publish what changed for
  each user (``sinks/redis_live.py``, for open streams; best effort); ack once every chunk
  is written.

With ``TL_DELIVER_OVERLAP`` (off by default) the next batch is walked while the previous
batch's last chunks are written (``agents/loop.consume``): once every chunk of a batch has
started writing, the next batch is walked; its chunks start once the previous batch's are
written (so writes to a user's rows keep the log's order), and each batch is acked when its
own chunks are written.

A batch is walked one source partition at a time (a partition's events address only its own
users): as soon as the partitions walked hold a chunk's worth of writes, their chunks are
handed to the writer and written while the next partitions' events are walked, so the stores
are not idle while the worker decodes and plans.

Every write is keyed by (user, tweet id): replaying a batch changes nothing.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from faust.streams import current_event

from agents.failures import Isolator
from agents.loop import consume
from agents.metrics import count_deliveries, observe_fanout_lag
from agents.outbox import Outbox, misplaced_policy
from agents.sinks import Sinks, get_sinks, with_retry
from faust_app import app, runs, settings
from policies.activity import is_active
from policies.chunks import plan_chunks
from policies.rebuild import AuthorTweets, plan_rebuild
from policies.stream import stage_notices
from policies.timeline import backfill_window
from policies.partitioning import partition_for_id
from schemas import ContractError, Limits, UserActive, decode
from schemas.deliveries import Add, Backfill, DeliveryOp, Follow, Remove, Unfollow, decode_ops
from schemas.events import INT64_MAX as MAX_ID
from sinks.redis_client import REDIS_ERRORS
from streams.topics import EVENTS_ON, dead_letters_topic, recipient_events
from tables.edges import edge_key, entity_key, event_scope, iter_edges
from tables.graph import following_edges, recipients
from tables.row_cache import RowCache, cleared_when_partitions_move

log = logging.getLogger(__name__)
STAGE = "deliver"
BATCH_MAX = 500
NEW_RECIPIENT = {"active_at": None, "stale": False, "floor": 0}
LIMITS = Limits.from_settings(settings)
ISOLATOR = Isolator(STAGE, settings.systemic_error_streak)
# The ``recipients`` rows between batches (only this agent writes them); cleared whenever
# partitions move.
RECIPIENTS = cleared_when_partitions_move(app, RowCache(recipients))
# user -> the batch (its ``seq``) that last set the user's ``mirror_pending`` and whose chunks
# are not written yet: that flag is not a crashed run's leftover (``RecipientBatch.state``),
# and only that batch clears it (``confirm``). Emptied when a batch's writes fail (the batches
# are processed again, their flags read as leftovers) and when partitions move.
MARKS: dict[int, int] = cleared_when_partitions_move(app, {})
_SEQ = itertools.count(1)


class RecipientBatch:
    """The net effect of one batch on timelines, following lists and metadata."""

    def __init__(self, sinks: Sinks) -> None:
        self.sinks = sinks
        self.seq = next(_SEQ)
        # (user, tweet) -> (present, author): the last op on a row wins.
        self.rows: dict[tuple[int, int], tuple[bool, int]] = {}
        self.following: dict[tuple[int, int], int | None] = {}  # (user, followee) -> since, None = delete
        self.meta: dict[int, dict] = {}  # user -> recipient state to mirror into Cassandra
        self.invalidate: set[int] = set()
        self.clear: set[int] = set()  # users whose Cassandra timeline is cleared first (rebuilds)
        self.deleted: list[tuple[int, int, int]] = []  # (user, tweet, author) of Remove ops, for live notices
        # user -> the last event that changed state still to be written (its chunks)
        self.pending: dict[int, Any] = {}
        # Author timelines read by this message's ops (see prefetch): author -> ids, newest first.
        self._newest: dict[int, list[int]] = {}
        self._removable: dict[int, list[int]] = {}
        # For the metrics, once its chunks are written: rows by outcome, created_at of added tweets.
        self.counts: dict[str, int] = dict.fromkeys(("pushed", "skipped_inactive", "removed", "backfilled", "rebuilt"), 0)
        self.created_at: list[int] = []
        # user -> a private copy of their ``recipients`` row as of the last read or
        # save in this batch (``RECIPIENTS`` keeps the rows between batches). Only this batch writes the rows meanwhile
        # (the agent runs with concurrency=1), and save() keeps the copy current.
        self._recs: dict[int, dict] = {}

    # --- state ----------------------------------------------------------------
    def _stored(self, user_id: int) -> dict:
        rec = self._recs.get(user_id)
        if rec is None:
            rec = self._recs[user_id] = RECIPIENTS.get(entity_key(user_id)) or dict(NEW_RECIPIENT)
        return rec

    def state(self, user_id: int) -> dict:
        rec = dict(self._stored(user_id))
        if rec.get("mirror_pending") and user_id not in self.meta and user_id not in MARKS:
            # A run of this batch changed it and died before its chunks were written: mirror again.
            self.meta[user_id] = rec
            self.invalidate.add(user_id)
            self._mark(user_id)
        return rec

    def _mark(self, user_id: int) -> None:
        self.pending[user_id] = current_event()
        MARKS[user_id] = self.seq

    def save(self, user_id: int, rec: dict, *, mirror: bool) -> None:
        if mirror:
            rec["mirror_pending"] = True
            self.meta[user_id] = rec
            self.invalidate.add(user_id)
            self._mark(user_id)
        RECIPIENTS.put(entity_key(user_id), rec)
        self._recs[user_id] = dict(rec)

    def confirm(self) -> None:
        """After its chunks are written: the mirrored state and rebuilds are written; clear their
        flags (unless a later batch set them again: its own chunks are not written yet)."""
        for user_id, event in self.pending.items():
            if MARKS.get(user_id) != self.seq:
                continue
            del MARKS[user_id]
            with event_scope(event):
                rec = RECIPIENTS.get(entity_key(user_id)) or dict(NEW_RECIPIENT)
                rec.pop("mirror_pending", None)
                rec.pop("rebuild_pending", None)
                RECIPIENTS.put(entity_key(user_id), rec)

    def accepts(self, user_id: int, rec: dict, at: int) -> bool:
        """Whether the user's timeline is kept up to date; marks it stale when not."""
        if rec["stale"]:
            return False
        if is_active(rec["active_at"], at, settings.inactive_after_ms):
            return True
        rec["stale"] = True  # deliveries are skipped from here on; rebuilt on return
        self.save(user_id, rec, mirror=True)
        return False

    # --- ops --------------------------------------------------------------------
    def add(self, op: Add) -> None:
        tweet_id, author_id, at = op.tweet_id, op.author_id, op.created_at
        self.created_at.append(at)
        for user_id in op.to:
            # The batch's own copy, not a copy of it per recipient: add() changes nothing, and
            # accepts() saves what it changes (save() keeps a fresh copy). state() only for a
            # mirror a crashed run left pending (it records it).
            rec = self._stored(user_id)
            if rec.get("mirror_pending"):
                rec = self.state(user_id)
            if not self.accepts(user_id, rec, at):
                self.counts["skipped_inactive"] += 1
            elif tweet_id > rec["floor"]:
                self.rows[(user_id, tweet_id)] = (True, author_id)
                self.counts["pushed"] += 1

    def remove(self, op: Remove) -> None:
        for user_id in op.to:
            self.rows[(user_id, op.tweet_id)] = (False, op.author_id)
            self.deleted.append((user_id, op.tweet_id, op.author_id))
        self.counts["removed"] += len(op.to)

    async def on_activity(self, ev: UserActive) -> None:
        rec = self.state(ev.user_id)
        rebuild = rec["stale"] or rec.get("rebuild_pending")
        if rec["active_at"] is not None and ev.at <= rec["active_at"] and not rebuild:
            return  # an old or repeated activity event
        rec["active_at"] = ev.at if rec["active_at"] is None else max(rec["active_at"], ev.at)
        if rebuild:
            await self.rebuild(ev.user_id, rec)
        self.save(ev.user_id, rec, mirror=False)

    async def follow(self, op: Follow) -> None:
        user_id, followee = op.follower, op.followee
        following_edges[edge_key(user_id, followee)] = b"%d" % op.at
        self.following[(user_id, followee)] = op.at
        rec = self.state(user_id)
        if self.accepts(user_id, rec, op.at):
            await self.backfill_user(user_id, rec, followee, above=0)

    async def unfollow(self, op: Unfollow) -> None:
        user_id, followee = op.follower, op.followee
        if following_edges.get(edge_key(user_id, followee)) is not None:
            del following_edges[edge_key(user_id, followee)]
        self.following[(user_id, followee)] = None
        rec = self.state(user_id)
        if followee not in self._removable:
            await self.prefetch_removable([followee])
        # The newest cap*4 of the author's tweets, those above the floor: exactly what
        # "tweet_id > floor LIMIT cap*4" returns (the ids above any floor are the newest ones).
        removable = [t for t in self._removable[followee] if t > rec["floor"]]
        for tweet_id in removable:
            self.rows[(user_id, tweet_id)] = (False, followee)
        self.counts["removed"] += len(removable)

    async def backfill(self, op: Backfill) -> None:
        """An author left celebrity status: add what they posted while pulled."""
        for user_id in op.to:
            rec = self.state(user_id)
            if not rec["stale"]:
                await self.backfill_user(user_id, rec, op.author, above=op.above)

    async def backfill_user(self, user_id: int, rec: dict, author_id: int, *, above: int) -> None:
        limit = settings.backfill_limit
        if author_id not in self._newest:
            await self.prefetch_newest([author_id])
        ids = self._newest[author_id]
        window = backfill_window(ids, limit, truncated=len(ids) > limit)
        if window.floor_candidate is not None and window.floor_candidate > rec["floor"]:
            rec["floor"] = window.floor_candidate
            self.save(user_id, rec, mirror=True)
        for tweet_id in window.ids_to_add:
            # Overrides an earlier removal in this batch (an unfollow, then a refollow).
            if tweet_id > max(rec["floor"], above):
                self.rows[(user_id, tweet_id)] = (True, author_id)
                self.counts["backfilled"] += 1

    async def rebuild(self, user_id: int, rec: dict) -> None:
        """Rebuild a returning user's timeline from their followees' author timelines."""
        followees = list(iter_edges(following_edges, user_id))
        cap = settings.timeline_cap
        params = [(a, MAX_ID, cap + 1) for a in followees]
        results = await with_retry(
            "rebuild reads", lambda: self.sinks.cassandra.query_many("author_tl_below", params)
        )
        by_author = {
            a: AuthorTweets([r.tweet_id for r in rows[:cap]], len(rows) > cap)
            for a, rows in zip(followees, results)
        }
        rebuilt = plan_rebuild(by_author, cap)
        # Earlier writes of this batch for the user are superseded by the rebuild; the user's
        # chunk clears the stored timeline before it writes the rebuilt one (after the writes
        # of earlier batches, which may still be going on).
        for key in [k for k in self.rows if k[0] == user_id]:
            del self.rows[key]
        self.clear.add(user_id)
        for tweet_id, author_id in rebuilt.entries:
            self.rows[(user_id, tweet_id)] = (True, author_id)
        self.counts["rebuilt"] += len(rebuilt.entries)
        rec["stale"] = False
        rec["rebuild_pending"] = True  # until its chunk wrote it: a replay rebuilds again
        rec["floor"] = rebuilt.floor
        self.save(user_id, rec, mirror=True)

    async def prefetch(self, ops: Sequence[DeliveryOp]) -> None:
        """Read, concurrently and once per author, the author timelines that the follows,
        backfills (newest ``backfill_limit + 1``) and unfollows (newest ``timeline_cap * 4``)
        of one delivery message need. Valid for that message only: stage 1 stored every
        tweet it fanned out before publishing the message, so a read made for any op of
        the message sees at least what that op needs; a later message may need newer ones."""
        newest = sorted({op.followee for op in ops if isinstance(op, Follow)}
                        | {op.author for op in ops if isinstance(op, Backfill)})
        removable = sorted({op.followee for op in ops if isinstance(op, Unfollow)})
        await asyncio.gather(self.prefetch_newest(newest), self.prefetch_removable(removable))

    async def prefetch_newest(self, authors: Sequence[int]) -> None:
        """The newest ``backfill_limit + 1`` tweet ids of each author (follows, backfills)."""
        if authors:
            params = [(a, MAX_ID, settings.backfill_limit + 1) for a in authors]
            store = self.sinks.cassandra
            rows = await with_retry("backfill reads", lambda: store.query_many("author_tl_below", params))
            self._newest.update({a: [r.tweet_id for r in found] for a, found in zip(authors, rows)})

    async def prefetch_removable(self, authors: Sequence[int]) -> None:
        """The newest ``timeline_cap * 4`` tweet ids of each author (unfollows)."""
        if authors:
            params = [(a, 0, settings.timeline_cap * 4) for a in authors]
            store = self.sinks.cassandra
            rows = await with_retry("unfollow reads", lambda: store.query_many("author_tl_above", params))
            self._removable.update({a: [r.tweet_id for r in found] for a, found in zip(authors, rows)})

    async def handle(self, payload: Any) -> None:
        if isinstance(payload, UserActive):
            await self.on_activity(payload)
            return
        self._newest.clear()
        self._removable.clear()
        await self.prefetch(payload)
        for op in payload:
            if isinstance(op, Add):
                self.add(op)
            elif isinstance(op, Remove):
                self.remove(op)
            elif isinstance(op, Follow):
                await self.follow(op)
            elif isinstance(op, Unfollow):
                await self.unfollow(op)
            elif isinstance(op, Backfill):
                await self.backfill(op)
            else:  # pragma: no cover - decode_ops returns only these
                raise TypeError(f"unknown delivery op {op!r}")

    # --- writes -----------------------------------------------------------------
    def weight(self) -> int:
        """The writes collected so far (timeline rows, following rows, metadata), as chunks count them."""
        return len(self.rows) + len(self.following) + len(self.meta)

    def chunks(self, max_rows: int) -> list["TimelineWrites"]:
        """The batch's writes grouped by user into chunks of at most ``max_rows`` writes
        (``policies/chunks.py``; a user is never split), users in the order the batch met them."""
        weights: dict[int, int] = {}
        for user_id, _ in self.rows:
            weights[user_id] = weights.get(user_id, 0) + 1
        for user_id, _ in self.following:
            weights[user_id] = weights.get(user_id, 0) + 1
        for user_id in self.meta:
            weights[user_id] = weights.get(user_id, 0) + 1
        for user_id in self.invalidate | self.clear:
            weights.setdefault(user_id, 1)
        for user_id, _, _ in self.deleted:  # (a rebuild drops the user's rows, not their notices)
            weights.setdefault(user_id, 0)
        plans = plan_chunks(weights, max_rows)
        if len(plans) <= 1:
            whole = TimelineWrites(self.rows, self.following, self.meta, self.invalidate, self.deleted, self.clear)
            return [whole] if plans else []
        index = {user_id: i for i, users in enumerate(plans) for user_id in users}
        parts = [TimelineWrites() for _ in plans]
        for key, row in self.rows.items():
            parts[index[key[0]]].rows[key] = row
        for key, since in self.following.items():
            parts[index[key[0]]].following[key] = since
        for user_id, rec in self.meta.items():
            parts[index[user_id]].meta[user_id] = rec
        for user_id in self.invalidate:
            parts[index[user_id]].invalidate.add(user_id)
        for user_id in self.clear:
            parts[index[user_id]].clear.add(user_id)
        for deleted in self.deleted:
            parts[index[deleted[0]]].deleted.append(deleted)
        return parts

    async def write(self, w: "TimelineWrites") -> None:
        """One chunk: Cassandra first (the durable timeline), its users' metadata, then Redis
        (the cache, only where a cached timeline exists), then notices for open streams."""
        if w.clear:  # rebuilt timelines: the old rows go before the rebuilt ones are written
            clears = [("clear_user_tl", (user_id,)) for user_id in sorted(w.clear)]
            await with_retry("clear timeline", lambda: self.sinks.cassandra.execute_many(clears))
        writes = w.cassandra_writes()
        await with_retry("timeline writes", lambda: self.sinks.cassandra.execute_many(writes))
        # The meta last: a reader that sees a rebuild's stale=false finds its rows written.
        meta = w.meta_writes()
        await with_retry("timeline meta", lambda: self.sinks.cassandra.execute_many(meta))
        adds: dict[int, list[tuple[int, int]]] = {}
        removes: dict[int, list[tuple[int, int]]] = {}
        for (user_id, tweet_id), (present, author_id) in w.rows.items():
            if user_id not in w.invalidate:
                (adds if present else removes).setdefault(user_id, []).append((tweet_id, author_id))
        timelines = self.sinks.timelines
        await with_retry("redis push", lambda: timelines.push_many(adds))
        await with_retry("redis unpush", lambda: timelines.unpush_many(removes))
        await with_retry("redis invalidate", lambda: timelines.invalidate(w.invalidate))
        if w.following:  # cached following lists (query/view.py): dropped after Cassandra
            changed = {user_id for user_id, _ in w.following}
            await with_retry("redis following", lambda: self.sinks.following.invalidate(changed))
        # Last, best effort: open streams of these users read what was just written. Notices
        # are built only for users with an open stream (most have none).
        touched = {u for u, _ in w.rows} | {u for u, _ in w.following} | w.invalidate
        live = await self.sinks.live.listening_users(touched)
        if live:
            follows = {k: since is not None for k, since in w.following.items()}
            await self.sinks.live.publish_users(stage_notices(
                w.rows, w.deleted, follows, w.invalidate, only=live, tails=await self.live_tails(w, live)))

    async def live_tails(self, w: "TimelineWrites", live: set[int]) -> dict[int, bytes]:
        """The page-item tails of the tweets added to these users' timelines (their notices carry
        them: an open stream sends them without a read); best effort, one Redis read."""
        ids = {t for (u, t), (present, _) in w.rows.items() if present and u in live and u not in w.invalidate}
        if not ids:
            return {}
        try:
            bodies = await self.sinks.tweets.read(sorted(ids))
        except (*REDIS_ERRORS, OSError) as exc:
            log.warning("live notices without items: %r", exc)
            return {}
        return {t: b.rendered for t, b in bodies.items() if b is not None and b.rendered and not b.deleted_at}


class ChunkWriter:
    """Writes the chunks of one or more ``RecipientBatch``es (``RecipientBatch.write``), at
    most ``in_flight`` at once, started in the order they were handed over; no chunk starts
    after one failed. ``start`` returns at once, so a batch's first chunks are written while
    the caller goes on (handling the next partition's events); ``wait`` returns when every
    chunk is written, or cancels the rest and raises the first error. ``after``: the writes
    of the previous batch (a future), which every chunk waits for; if they failed, no chunk
    starts (``wait`` raises ``EarlierWritesFailed``)."""

    def __init__(self, in_flight: int, after: "asyncio.Future[None] | None" = None) -> None:
        self.limit = asyncio.Semaphore(in_flight)  # FIFO: chunks start in the order handed over
        self.after = after
        self.failed = False
        self.batches: list[RecipientBatch] = []  # handed over, in order
        self.tasks: list[asyncio.Future] = []
        self._queued = 0  # chunks handed over that have not started writing (or given up)
        self._walked = False
        # Done once the batch is walked and every chunk of it started writing (or gave up): the
        # next batch is walked then, so it gathers what arrives while this one is written.
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self, batch: RecipientBatch) -> None:
        self.batches.append(batch)
        for part in batch.chunks(settings.deliver_chunk_rows):
            self._queued += 1
            self.tasks.append(asyncio.ensure_future(self._one(batch, part)))

    def walked(self) -> None:
        """The batch is walked: no more chunks come."""
        self._walked = True
        self._check_started()

    def _check_started(self) -> None:
        if self._walked and self._queued == 0 and not self.started.done():
            self.started.set_result(None)

    async def _one(self, batch: RecipientBatch, part: "TimelineWrites") -> None:
        try:
            after = self.after
            if after is not None and not after.done():
                await asyncio.wait([after])
            if after is not None and (after.cancelled() or after.exception() is not None):
                self.failed = True
                raise EarlierWritesFailed("the previous batch's writes failed; this batch is processed again")
            await self.limit.acquire()
        finally:
            self._queued -= 1
            self._check_started()
        try:
            if self.failed:
                return  # no chunk starts after one failed
            try:
                await batch.write(part)
            except BaseException:
                self.failed = True
                raise
        finally:
            self.limit.release()

    async def wait(self) -> None:
        try:
            await asyncio.gather(*self.tasks)
        except BaseException:
            await self.cancel()
            raise

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.walked()


class EarlierWritesFailed(Exception):
    """A batch's chunks did not start: the previous batch's writes failed (both are processed again)."""


@dataclass
class TimelineWrites:
    """What a batch (or one chunk of it: some of its users) writes to timelines."""

    rows: dict[tuple[int, int], tuple[bool, int]] = field(default_factory=dict)  # (user, tweet) -> (present, author)
    following: dict[tuple[int, int], int | None] = field(default_factory=dict)  # (user, followee) -> since / None
    meta: dict[int, dict] = field(default_factory=dict)  # user -> recipient state to mirror
    invalidate: set[int] = field(default_factory=set)  # users whose cached timeline is dropped
    deleted: list[tuple[int, int, int]] = field(default_factory=list)  # (user, tweet, author) removed
    clear: set[int] = field(default_factory=set)  # users whose stored timeline is cleared first

    def cassandra_writes(self) -> list[tuple[str, tuple]]:
        writes: list[tuple[str, tuple]] = []
        for (user_id, tweet_id), (present, author_id) in self.rows.items():
            if present:
                writes.append(("insert_user_tl", (user_id, tweet_id, author_id)))
            else:
                writes.append(("delete_user_tl", (user_id, tweet_id)))
        for (user_id, followee), since in self.following.items():
            if since is None:
                writes.append(("delete_following", (user_id, followee)))
            else:
                writes.append(("insert_following", (user_id, followee, since)))
        return writes

    def meta_writes(self) -> list[tuple[str, tuple]]:
        now = int(time.time() * 1000)
        return [("set_meta", (u, rec["floor"], rec["stale"], now)) for u, rec in self.meta.items()]


def decode_batch(events: Sequence[Any], outbox: Outbox) -> list[tuple[Any, Any]]:
    good = []
    for event in events:
        msg = event.message
        try:
            if msg.topic == settings.topic_activity:
                payload: Any = decode(msg.value, EVENTS_ON[msg.topic], LIMITS)
                if outbox.reroute_if_misplaced(app, event, payload.user_id):
                    continue
            else:
                partition = msg.partition
                payload = decode_ops(
                    msg.value,
                    lambda user_id: partition_for_id(user_id, settings.topic_partitions) == partition,
                    settings.delivery_max_bytes,
                )
        except ContractError as exc:
            outbox.dead_letter(dead_letters_topic, event, exc.reason, STAGE)
            continue
        good.append((event, payload))
    return good


def by_partition(good: Sequence[tuple[Any, Any]]) -> list[list[tuple[Any, Any]]]:
    """The batch's events grouped by the partition they came from, each group in log order,
    groups in the order the batch met them. A partition's events address only its own users
    (``decode_batch`` moved or refused the others), so groups never share a user."""
    groups: dict[int, list[tuple[Any, Any]]] = {}
    for event, payload in good:
        groups.setdefault(event.message.partition, []).append((event, payload))
    return list(groups.values())


# The writes of the last batch begun (overlap): the next batch's chunks start after them.
_LAST_WRITES: "asyncio.Future[None] | None" = None


async def begin_recipient_batch(sinks: Sinks, events: Sequence[Any]) -> tuple[asyncio.Future, asyncio.Future]:
    """Walk the batch and start its chunks after the previous batch's writes (overlap,
    ``agents/loop.consume``); returns the future of its writes (which also confirms the
    batch's state, counts it and publishes its dead letters once they are done) and the
    future of ``ChunkWriter.started`` (the next batch is walked then)."""
    global _LAST_WRITES
    finish, writer = await _walk(sinks, events, after=_LAST_WRITES)
    _LAST_WRITES = done = asyncio.ensure_future(finish())
    done.add_done_callback(_writes_done)
    return done, writer.started


def _writes_done(done: "asyncio.Future[None]") -> None:
    if done.cancelled() or done.exception() is not None:
        MARKS.clear()  # the batches are processed again: their flags are leftovers to mirror


async def process_recipient_batch(sinks: Sinks, events: Sequence[Any]) -> None:
    """Walk the batch and write it to the end (the batch is acked only then). Earlier
    batches' writes have stopped (``agents/loop.consume`` waits for them)."""
    global _LAST_WRITES
    _LAST_WRITES = None  # done, or failed and processed again: the next batch need not wait
    try:
        finish, _ = await _walk(sinks, events, after=None)
        await finish()
    except BaseException:
        MARKS.clear()
        raise


async def _walk(sinks: Sinks, events: Sequence[Any], *,
                after: "asyncio.Future[None] | None") -> tuple[Any, ChunkWriter]:
    """Walk the batch one source partition at a time (``RecipientBatch.handle``); once the
    partitions walked so far hold a chunk's worth of writes (``deliver_chunk_rows``), hand them
    to the writer and go on with the next partitions while they are written, so the stores work
    while the worker decodes and plans (a small batch is one set of chunks, as before). Returns
    ``finish`` (wait until every chunk is written, then confirm, count and publish dead
    letters) and the writer."""
    misplaced = misplaced_policy(settings.misplaced_events, dead_letters_topic, STAGE)
    outbox = Outbox(settings.topic_partitions, misplaced_dead_letters=misplaced)
    writer = ChunkWriter(settings.deliver_chunks_in_flight, after=after)
    batch = RecipientBatch(sinks)
    try:
        for group in by_partition(decode_batch(events, outbox)):
            for event, payload in group:
                with event_scope(event):
                    try:
                        await batch.handle(payload)
                    except Exception as exc:  # noqa: BLE001 - a bug must not stall the partition
                        log.exception("delivery failed for %r", payload)
                        # SystemicFault (a misconfiguration, or the same error on many events) escapes.
                        outbox.dead_letter(dead_letters_topic, event, ISOLATOR.event_failed(exc), STAGE)
                    else:
                        ISOLATOR.event_succeeded()
                await asyncio.sleep(0)  # let the chunks in flight move on between messages
            if batch.weight() >= settings.deliver_chunk_rows:
                writer.start(batch)
                batch = RecipientBatch(sinks)
                await asyncio.sleep(0)  # its first chunks are sent before the next partition is walked
                if writer.failed:
                    break
        else:
            writer.start(batch)
        writer.walked()
    except BaseException:
        await writer.cancel()
        raise

    async def finish() -> None:
        await writer.wait()  # (cancels the other chunks if one fails)
        for done in writer.batches:
            done.confirm()
            count_deliveries(done.counts)
            observe_fanout_lag(done.created_at)
        await with_retry("publish dead letters", lambda: outbox.flush(dead_letters_topic))

    return finish, writer


async def deliver(stream: Any) -> None:
    await consume(stream, ISOLATOR, lambda: get_sinks(settings), process_recipient_batch,
                  begin=begin_recipient_batch, overlap=settings.deliver_overlap,
                  batch_max=BATCH_MAX, pace_s=settings.deliver_pace_ms / 1000,
                  gate_of=lambda sinks: sinks.cassandra.gate,
                  dead_letters_topic=dead_letters_topic, partitions=settings.topic_partitions)


if runs("deliver"):  # the process's role (policies/worker_layout.py)
    deliver = app.agent(recipient_events, concurrency=1)(deliver)
