"""Stage 1, keyed by author: store tweets, keep the follower graph, plan the fanout.

Consumes ``tweets`` (keyed by author) and ``follows`` (keyed by followee)
together, so an author's tweets and follower edges meet in one partition and
are processed in log order. A batch is handled in three steps:

1. store the batch's tweets (bodies and author timelines) and deletes: a post
   claims its tweet id in PostgreSQL (the first post of an id wins, globally), a
   delete counts only by the tweet's author; the rest is dead-lettered
   (``write_tweets``);
2. walk the events in order: update the edge and author tables, ask the pure
   policies what to deliver, and queue delivery ops keyed by recipient;
3. publish the delivery batches (one message per destination partition) and
   dead letters, and wait for Kafka's acks.

Only then does the stream ack the batch, so a crash replays it; every step is
idempotent. Step 1 precedes step 3, so when the delivery stage backfills a new
follower from the author timeline it sees every tweet fanned out before it.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from faust.streams import current_event

from agents.failures import Isolator
from agents.loop import consume
from agents.metrics import FANOUT_TWEETS, count_rows
from agents.outbox import Outbox, misplaced_policy
from agents.sinks import Sinks, get_sinks, with_retry
from faust_app import app, runs, settings
from policies.celebrity import CelebrityRule
from policies.fanout import Groups, is_pulled, plan_fanout, plan_recipients, plan_removal
from policies.first_wins import (
    Delete,
    Post,
    StoredTweet,
    delete_verdict,
    not_author_reason,
    post_verdict,
    settle,
    taken_reason,
)
from policies.partitioning import partition_for_id
from policies.stream import Notice
from schemas import (
    ContractError,
    Limits,
    TweetDeleted,
    TweetPosted,
    UserFollowed,
    UserUnfollowed,
    decode,
)
from schemas.deliveries import Add, Backfill, Follow, Remove, Unfollow
from schemas.tweet_json import render_tail
from sinks.redis_live import LiveChannels
from streams.topics import EVENTS_ON, author_events, dead_letters_topic, deliveries_topic
from tables.edges import edge_key, entity_key, event_scope, iter_edges
from tables.follower_plans import FollowerPlans
from tables.graph import authors, early_deletes, follower_edges
from tables.row_cache import cleared_when_partitions_move

log = logging.getLogger(__name__)
STAGE = "fanout"
BATCH_MAX = 500
RULE = CelebrityRule(settings.celebrity_threshold, settings.celebrity_hysteresis)
NEW_AUTHOR = {"followers": 0, "celebrity": False, "since": 0, "last_pushed": 0}
LIMITS = Limits.from_settings(settings)
ISOLATOR = Isolator(STAGE, settings.systemic_error_streak)
# Each author's followers grouped by partition, between batches (tables/follower_plans.py);
# cleared whenever partitions move.
PLANS = cleared_when_partitions_move(app, FollowerPlans())


def decode_batch(events: Sequence[Any], outbox: Outbox) -> list[tuple[Any, Any]]:
    """Typed events of the batch; bad ones go to the dead-letter topic, misrouted ones are re-sent."""
    good = []
    for event in events:
        msg = event.message
        try:
            typed = decode(msg.value, EVENTS_ON[msg.topic], LIMITS)
        except ContractError as exc:
            outbox.dead_letter(dead_letters_topic, event, exc.reason, STAGE)
            continue
        # On the wrong partition the event would miss its author's edges: move it where they are.
        if outbox.reroute_if_misplaced(app, event, typed.key):
            continue
        good.append((event, typed))
    return good


@dataclass
class TweetVerdicts:
    """Step 1's decisions for a batch's posts and deletes (``policies/first_wins.py``)."""

    accepted: list[tuple[Any, Any]] = field(default_factory=list)  # (event, typed) for step 2, in order
    rejected: list[tuple[Any, str]] = field(default_factory=list)  # (event, reason): dead letters
    posted: list[TweetPosted] = field(default_factory=list)  # stored and cached (hidden ones included)
    pushed: list[TweetPosted] = field(default_factory=list)  # go into the author timeline
    deletes: list[TweetDeleted] = field(default_factory=list)  # applied (an early one as its post arrives)
    early: list[tuple[Any, TweetDeleted]] = field(default_factory=list)  # kept aside (early_deletes)
    consumed: list[tuple[Any, TweetPosted]] = field(default_factory=list)  # early deletes now applied


def judge_tweets(
    good: Sequence[tuple[Any, Any]],
    stored: dict[int, StoredTweet],
    early_delete_at: Callable[[Any, int, int], int | None],
) -> TweetVerdicts:
    """Who keeps a tweet id, whose deletes count, what step 2 still sees. No I/O.

    ``stored``: the row of every posted id (after this batch's claims) and of every
    deleted id that has one. ``early_delete_at(event, author, tweet)``: the author's
    early delete of the tweet kept aside, if any. A post of an id held by another
    tweet and a delete by anyone but the tweet's author are rejected; an accepted
    post whose tweet is deleted (stored mark, the author's early delete, or a delete
    earlier in this batch) is stored but not pushed.
    """
    v = TweetVerdicts()
    deleted_here: set[int] = set()  # ids with an applied delete earlier in the batch
    for event, ev in good:
        if isinstance(ev, TweetPosted):
            row = stored[ev.tweet_id]
            if post_verdict(row, ev) is not Post.SAME:
                v.rejected.append((event, taken_reason(row, ev)))
                continue
            v.posted.append(ev)
            if ev.tweet_id in deleted_here:
                continue  # deleted earlier in this batch: nothing to push
            early = early_delete_at(event, ev.author_id, ev.tweet_id)
            if early is not None:
                v.consumed.append((event, ev))
                if not row.deleted_at:
                    v.deletes.append(TweetDeleted(ev.tweet_id, ev.author_id, early))
            if early is not None or row.deleted_at:
                deleted_here.add(ev.tweet_id)
                continue  # stored as deleted: nothing to push
            v.pushed.append(ev)
            v.accepted.append((event, ev))
        elif isinstance(ev, TweetDeleted):
            verdict = delete_verdict(stored.get(ev.tweet_id), ev)
            if verdict is Delete.NOT_AUTHOR:
                v.rejected.append((event, not_author_reason(stored[ev.tweet_id], ev)))
            elif verdict is Delete.EARLY:
                v.early.append((event, ev))  # nothing was stored or pushed: nothing to remove yet
            else:
                deleted_here.add(ev.tweet_id)
                v.deletes.append(ev)
                v.accepted.append((event, ev))
        else:
            v.accepted.append((event, ev))
    return v


def store_tweets(v: TweetVerdicts) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]], list[tuple[str, tuple]]]:
    """Cassandra writes after the claims: the winners' bodies, then author timelines, then
    deletes (applied after: a delete wins). A body insert leaves ``deleted_at`` alone."""
    bodies = [("insert_tweet", (ev.tweet_id, ev.author_id, ev.text, ev.created_at)) for ev in v.posted]
    inserts = [("insert_author_tl", (ev.author_id, ev.tweet_id)) for ev in v.pushed]
    deletes: list[tuple[str, tuple]] = []
    for ev in v.deletes:
        deletes.append(("mark_deleted", (max(ev.deleted_at, 1), ev.tweet_id)))
        deletes.append(("delete_author_tl", (ev.author_id, ev.tweet_id)))
    return bodies, inserts, deletes


def author_window_changes(v: TweetVerdicts) -> tuple[dict[int, list[tuple[int, int]]], dict[int, list[tuple[int, int]]]]:
    """The entries each author's cached window gains (``store_tweets``' inserts) and loses (its deletes)."""
    return _entries_by_author(v.pushed), _entries_by_author(v.deletes)


def _entries_by_author(events: Iterable[Any]) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for ev in events:
        out.setdefault(ev.author_id, []).append((ev.tweet_id, ev.author_id))
    return out


def _early_delete_at(event: Any, author_id: int, tweet_id: int) -> int | None:
    with event_scope(event):
        raw = early_deletes.get(edge_key(author_id, tweet_id))
    return int(raw) if raw is not None else None


async def write_tweets(sinks: Sinks, good: Sequence[tuple[Any, Any]], outbox: Outbox) -> list[tuple[Any, Any]]:
    """Step 1: claim the batch's tweet ids, store tweets and deletes; the events step 2 must process.

    Posts claim their id in PostgreSQL (``TweetClaims.claim``, one statement for the
    batch): tweets of different authors are processed on different partitions and
    workers, so only a store can say which post of an id came first, and PostgreSQL's
    first-row-wins insert does it for a whole batch where Cassandra needs a lightweight
    transaction (a Paxos round, ~25x the server CPU) per id. Meanwhile Cassandra's rows
    of the batch's ids are read (delete marks, the author a delete is checked against;
    ``settle`` combines both). A row's author is written once, by its winner, and never
    changes, so the read cannot go stale before the writes. The winners' bodies are
    written to Cassandra before anything else of the batch. Rejected events are
    dead-lettered.
    """
    posts = {}
    for _, ev in good:
        if isinstance(ev, TweetPosted):
            posts.setdefault(ev.tweet_id, ev)  # the batch's first post of an id claims it
    deleted_ids = {ev.tweet_id for _, ev in good if isinstance(ev, TweetDeleted)}
    if not posts and not deleted_ids:
        return list(good)
    claims = [(ev.tweet_id, ev.author_id, ev.text, ev.created_at) for ev in posts.values()]
    claimed, rows = await asyncio.gather(
        with_retry("claim tweets", lambda: sinks.claims.claim(claims)),
        with_retry("read tweets", lambda: sinks.cassandra.read_tweets(posts.keys() | deleted_ids)),
    )
    v = judge_tweets(good, settle(claimed, rows), _early_delete_at)
    for event, reason in v.rejected:
        outbox.dead_letter(dead_letters_topic, event, reason, STAGE)
    bodies, inserts, deletes = store_tweets(v)
    posted = [(e.tweet_id, e.author_id, e.text, e.created_at) for e in v.posted]
    deleted = [(e.tweet_id, max(e.deleted_at, 1)) for e in v.deletes]

    async def store() -> None:
        await with_retry("store tweets", lambda: sinks.cassandra.execute_many(inserts))
        await with_retry("store deletes", lambda: sinks.cassandra.execute_many(deletes))

    async def cache_bodies() -> None:
        if posted:
            await with_retry("cache tweets", lambda: sinks.tweets.write(posted, []))

    # Bodies first: a reader that finds a tweet in a timeline (an author's here, a home
    # timeline once stage 2 has it) and misses the cache reads its Cassandra row. The cache
    # of the bodies alongside the author timelines; delete marks go to the cache only after
    # Cassandra has them (the cache never knows more than the store).
    if bodies:
        await with_retry("store bodies", lambda: sinks.cassandra.execute_many(bodies))
    await asyncio.gather(store(), cache_bodies())
    # After Cassandra has them, as for home timelines (sinks/redis_timeline.py): the cached
    # author windows (pulls of celebrities read them) get the stored tweets, lose the deleted
    # ones, and each author's version moves on, so that no reader fills a window with an older
    # Cassandra read.
    windows_add, windows_remove = author_window_changes(v)

    async def author_windows() -> None:  # removals after additions: a tweet may be both
        await with_retry("author windows", lambda: sinks.author_windows.push_many(windows_add))
        await with_retry("author windows", lambda: sinks.author_windows.unpush_many(windows_remove))

    async def cache_deletes() -> None:
        if deleted:
            await with_retry("cache deletes", lambda: sinks.tweets.write([], deleted))

    await asyncio.gather(cache_deletes(), author_windows())
    # Table changes last: a crash before them replays the batch with the same outcome
    # (an early delete applied above is then found as the stored deleted_at).
    for event, ev in v.early:
        with event_scope(event):
            key = edge_key(ev.author_id, ev.tweet_id)
            if early_deletes.get(key) is None:  # the first delete's time wins, as in the stores
                early_deletes[key] = b"%d" % max(ev.deleted_at, 1)
    for event, ev in v.consumed:
        with event_scope(event):
            early_deletes.pop(edge_key(ev.author_id, ev.tweet_id), None)
    return v.accepted


def _author(author_id: int) -> dict:
    return dict(authors.get(entity_key(author_id)) or NEW_AUTHOR)


class AuthorBatch:
    """Step 2 for one batch: table updates and the delivery ops they imply."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.status_writes: dict[int, dict] = {}  # author -> newest status
        # events of authors whose demotion backfill is queued in this batch
        self.backfills: dict[int, Any] = {}
        # Live notices (sinks/redis_live.py): pulled tweets and deletes, celebrity transitions.
        self.pulled: dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}
        self.tails: dict[int, bytes] = {}  # pulled tweet -> its page item's tail (the notice's items)
        self.transitions: list[tuple[int, bool]] = []

    def notices(self, live: LiveChannels) -> dict[str, Notice]:
        """A celebrity's notice carries its pulled tweets' items (``policies.stream.Notice``), so
        a follower's open stream can send them without a read, as stage 2's notices do."""
        out = {live.author(a): Notice(added=tuple(added), deleted=tuple(deleted),
                                      items=tuple((t, a, self.tails[t]) for t, a in added), pulled=True)
               for a, (added, deleted) in self.pulled.items()}
        if self.transitions:
            out[live.celebrities()] = Notice(celebrities=tuple(self.transitions))
        return out

    def partition_of(self, user_id: int) -> int:
        return partition_for_id(user_id, settings.topic_partitions)

    def on_follow_change(self, ev: UserFollowed | UserUnfollowed) -> None:
        key = edge_key(ev.followee_id, ev.follower_id)
        following = isinstance(ev, UserFollowed)
        exists = follower_edges.get(key) is not None
        author = _author(ev.followee_id)
        if following and not exists:
            follower_edges[key] = b"%d" % ev.at
            author["followers"] += 1
            PLANS.drop(ev.followee_id)
        elif not following and exists:
            del follower_edges[key]
            author["followers"] = max(0, author["followers"] - 1)
            PLANS.drop(ev.followee_id)
        self._apply_celebrity_rule(ev.followee_id, author)
        if author.get("backfill_pending") and ev.followee_id not in self.backfills:
            self._queue_backfill(ev.followee_id, author)
        authors[entity_key(ev.followee_id)] = author
        self.status_writes[ev.followee_id] = author
        # The follower's side (following list, backfill or removal) is the
        # delivery stage's job, in the follower's partition. Sent even for a
        # duplicate event: the delivery stage is idempotent too.
        change = Follow if following else Unfollow
        self.outbox.deliver(ev.follower_id, change(ev.follower_id, ev.followee_id, ev.at))

    def _apply_celebrity_rule(self, author_id: int, author: dict) -> None:
        change = RULE.transition(author["celebrity"], author["followers"])
        if change is not None:
            # Decide on the exact count: the edges and the counts are in two changelog
            # topics, so after a crash a replay can find an edge whose count was lost (or
            # the reverse) and the running count drifts. A transition is rare; counting
            # the author's edges (one prefix scan of the local store) makes it exact.
            exact = sum(1 for _ in iter_edges(follower_edges, author_id))
            if exact != author["followers"]:
                log.warning("author %d: follower count %d corrected to %d", author_id, author["followers"], exact)
                author["followers"] = exact
                change = RULE.transition(author["celebrity"], exact)
        if change is not None:
            self.transitions.append((author_id, change == "promoted"))
        if change == "promoted":
            author["celebrity"] = True
            author["backfill_pending"] = False
            # Tweets after the last pushed one are pulled at read time from now on.
            author["since"] = author["last_pushed"]
        elif change == "demoted":
            author["celebrity"] = False
            # Tweets posted while a celebrity were never pushed: push them now.
            # The flag survives a crash (it is in the changelogged table), so a
            # replay re-sends a backfill whose messages may have been lost.
            author["backfill_pending"] = True

    @staticmethod
    def followers(author_id: int) -> list[int]:
        """The author's followers, read from the local edge table (one prefix scan)."""
        return list(iter_edges(follower_edges, author_id))

    def recipient_groups(self, author_id: int) -> Groups:
        """The author's followers by destination partition (``plan_recipients``), kept between
        batches until one of the author's edges changes (``PLANS``)."""
        return PLANS.get(author_id, lambda: plan_recipients(self.followers(author_id), author_id, self.partition_of))

    def _queue_backfill(self, author_id: int, author: dict) -> None:
        for partition, recipients in self.recipient_groups(author_id):
            self.outbox.deliver_to_partition(partition, Backfill(author_id, author["since"], recipients))
        self.backfills[author_id] = current_event()

    def on_tweet(self, ev: TweetPosted) -> None:
        author = _author(ev.author_id)
        pulled = is_pulled(author["celebrity"], author["since"], ev.tweet_id)
        FANOUT_TWEETS.labels("pulled" if pulled else "pushed").inc()
        count_rows(1)
        if pulled:
            self.pulled.setdefault(ev.author_id, ([], []))[0].append((ev.tweet_id, ev.author_id))
            self.tails[ev.tweet_id] = render_tail(ev.text, ev.created_at)  # as the body cache renders it
        for batch in plan_fanout(ev, [] if pulled else self.recipient_groups(ev.author_id), pulled):
            self.outbox.deliver_to_partition(
                batch.partition,
                Add(ev.tweet_id, ev.author_id, ev.created_at, batch.recipients),
            )
        if not pulled and ev.tweet_id > author["last_pushed"]:
            author["last_pushed"] = ev.tweet_id
            authors[entity_key(ev.author_id)] = author

    def on_delete(self, ev: TweetDeleted) -> None:
        author = _author(ev.author_id)
        if is_pulled(author["celebrity"], author["since"], ev.tweet_id):
            # Never pushed (reads drop deleted tweets anyway); open streams are told.
            self.pulled.setdefault(ev.author_id, ([], []))[1].append((ev.tweet_id, ev.author_id))
            return
        for batch in plan_removal(ev, self.recipient_groups(ev.author_id)):
            self.outbox.deliver_to_partition(
                batch.partition,
                Remove(ev.tweet_id, ev.author_id, batch.recipients),
            )

    def handle(self, ev: Any) -> None:
        if isinstance(ev, TweetPosted):
            self.on_tweet(ev)
        elif isinstance(ev, TweetDeleted):
            self.on_delete(ev)
        else:
            self.on_follow_change(ev)


async def publish_author_status(sinks: Sinks, batch: AuthorBatch) -> None:
    """Every touched author's status, then the celebrity set: Cassandra (durable) first, then
    the Redis cache of it. Written for every touched author, not only on a transition, so a
    replay after a crash repairs a row or a cache that missed an update."""
    writes = []
    for a, s in batch.status_writes.items():
        writes.append(("set_author_status", (a, s["followers"], s["celebrity"], s["since"])))
        writes.append(("insert_celebrity" if s["celebrity"] else "delete_celebrity", (0, a)))
    await with_retry("author status", lambda: sinks.cassandra.execute_many(writes))
    if batch.status_writes:
        changes = [(a, bool(s["celebrity"])) for a, s in batch.status_writes.items()]
        await with_retry("celebrity set", lambda: sinks.celebrities.update(changes))


def new_outbox() -> Outbox:
    misplaced = misplaced_policy(settings.misplaced_events, dead_letters_topic, STAGE)
    return Outbox(settings.topic_partitions, settings.delivery_max_bytes, misplaced_dead_letters=misplaced)


async def process_author_batch(sinks: Sinks, events: Sequence[Any]) -> None:
    outbox = new_outbox()
    good = decode_batch(events, outbox)
    good = await write_tweets(sinks, good, outbox)
    batch = AuthorBatch(outbox)
    for event, typed in good:
        with event_scope(event):
            try:
                batch.handle(typed)
            except Exception as exc:  # noqa: BLE001 - a bug must not stall the partition
                log.exception("fanout failed for %r", typed)
                # SystemicFault (a misconfiguration, or the same error on many events) escapes.
                outbox.dead_letter(dead_letters_topic, event, ISOLATOR.event_failed(exc), STAGE)
            else:
                ISOLATOR.event_succeeded()
    await publish_author_status(sinks, batch)
    await with_retry("publish deliveries", lambda: outbox.flush(deliveries_topic))
    await sinks.live.publish(batch.notices(sinks.live))  # best effort, after the stores
    for author_id, event in batch.backfills.items():
        with event_scope(event):
            author = _author(author_id)
            author["backfill_pending"] = False
            authors[entity_key(author_id)] = author


async def fanout(stream: Any) -> None:
    await consume(stream, ISOLATOR, lambda: get_sinks(settings), process_author_batch,
                  batch_max=BATCH_MAX, pace_s=settings.fanout_pace_ms / 1000,
                  gate_of=lambda sinks: sinks.cassandra.gate,
                  dead_letters_topic=dead_letters_topic, partitions=settings.topic_partitions)


if runs("fanout"):  # the process's role (policies/worker_layout.py)
    fanout = app.agent(author_events, concurrency=1)(fanout)
