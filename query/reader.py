"""Reading a home timeline from the projections (the read side of the hybrid model).

A page of the home timeline of ``user`` below a cursor is the merge of

* the materialized timeline (Redis when cached, else Cassandra ``user_timeline``)
  above the user's floor, restricted to authors the user follows now;
* the newest tweets of the celebrities the user follows (pulled from
  ``author_timeline``), above the floor;
* below the floor, or for a user whose timeline is stale (skipped while
  inactive), the newest tweets of every followee (pull-merge), so paging never
  hits an end that is not the real one;

with deleted tweets dropped at hydration. The result is what the correctness
reference says: the newest tweets of current followees, minus deletes. How the
cut sources merge and how much a pull asks for are pure decisions
(``policies/timeline.py``).

What a read costs
-----------------

* The user's view, the first chunk and its tweet bodies on a cache hit, and the
  query service's rate-limit token: one Redis call (``query/view.py``, where the
  cache misses are described too). A cache hit without celebrities is that call alone.
* Hydration of what the first call did not read (later chunks, pulled tweets it did not
  expect): one ``MGET`` of the tweet bodies (``RedisTweets``; split by node on a cluster);
  Cassandra is asked only for bodies missing from Redis (one ``IN`` query).
* Celebrity pulls: the celebrities' cached windows of newest ids
  (``RedisTimelines.author_windows``), read by the first call on one Redis with the bodies
  of the pulled tweets that the page will likely show (so a hybrid read whose windows and
  bodies are cached is that call alone), else one script call (a cluster: a MULTI per
  author); for the authors whose window is missing or does not reach far enough, one
  ``IN ... PER PARTITION LIMIT`` query per group of authors, groups concurrent (a missing
  window is filled from that answer).

This relies on the rule documented in ``sinks/redis_timeline.py``: a cached key
holds the newest ``cap`` entries of the Cassandra timeline, so a key with fewer
than ``cap`` entries holds all of it.
"""
from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Awaitable, Callable, Sequence


from api.ratelimit import RedisTokenBucket
from policies.timeline import (SLACK, Source, merge_sources, pull_groups, pull_limit, pulled_source, usable_chunk,
                               window_pull)
from query.page import Page, ReadStats, Tweet, store_query
from query.view import UserViews, View, plain_hit
from schemas.events import INT64_MAX as MAX_ID
from settings import Settings
from sinks.cassandra import CassandraStore
from sinks.redis_client import REDIS_ERRORS, raised_by_redis_py
from sinks.redis_following import RedisFollowing
from sinks.redis_pipelined import PipelinedRedis
from sinks.redis_timeline import CachedTimeline, RedisTimelines
from sinks.redis_tweets import CachedTweet, RedisTweets

log = logging.getLogger(__name__)


async def _cache_or_store(what: str, read: Callable[[bool], Awaitable[Page]]) -> Page:
    """``read(cache=True)``; if Redis fails (down, out of memory, a timeout), ``read(False)``:
    the same page from Cassandra alone. Redis is a cache, never the reason a read fails."""
    try:
        return await read(True)
    except (*REDIS_ERRORS, AttributeError) as exc:
        # redis-py's cluster client can raise AttributeError ('NoneType' object has no attribute
        # 'writelines') on a connection it disconnected while this read used it (its aclose()
        # after MOVED or CLUSTERDOWN): a Redis failure, not a 500. Only when raised inside
        # redis-py: an AttributeError of our own code is a bug and propagates.
        if isinstance(exc, AttributeError) and not raised_by_redis_py(exc):
            raise
        log.warning("%s read without Redis: %r", what, exc)
        page = await read(False)
        page.stats.cache_bypassed = True
        return page


async def _fill_after_answer(user_id: int, fill: Callable[[], Awaitable[bool]]) -> None:
    """A miss's timeline fill after the read was answered: a failure is only logged (the next
    read misses again and fills)."""
    try:
        await fill()
    except (*REDIS_ERRORS, AttributeError) as exc:  # AttributeError: see _cache_or_store
        if isinstance(exc, AttributeError) and not raised_by_redis_py(exc):
            raise
        log.warning("home timeline of %s not cached after a miss: %r", user_id, exc)


class HomeTimelineReader:
    def __init__(
        self,
        settings: Settings,
        cassandra: CassandraStore,
        timelines: RedisTimelines,
        *,
        tweets: RedisTweets | None = None,
        following: RedisFollowing | None = None,
        pipelined: PipelinedRedis | None = None,
    ) -> None:
        self.settings = settings
        self.cassandra = cassandra
        self.timelines = timelines
        self.redis = timelines.redis
        self.tweets = tweets or RedisTweets(self.redis, prefix=settings.redis_prefix)
        following = following or RedisFollowing(
            self.redis, prefix=settings.redis_prefix, ttl_s=settings.timeline_ttl_s
        )
        self.windows = RedisTimelines.author_windows(self.redis, settings)
        self.views = UserViews(cassandra, timelines, following, self.tweets, prefix=settings.redis_prefix,
                               windows=self.windows, pipelined=pipelined)

    # --- stores ---------------------------------------------------------------------

    async def pull(
        self, authors: Sequence[int], below: int, above: int, limit: int, stats: ReadStats, *, cached: bool = False,
        prefetched: dict[int, tuple[CachedTimeline | None, str]] | None = None,
    ) -> list[Source]:
        """Each author's newest ids in (above, below), at most ``limit``, as merge sources.

        ``cached``: first from the authors' cached windows (``RedisTimelines.author_windows``;
        the celebrities of a hybrid read), the store for the rest, and a missing window is
        filled when the read starts at the top. ``prefetched``: windows (and versions) the
        read's first round trip already read below ``below``, at least ``limit`` ids each
        (``View.windows_for``); the others are read here. Otherwise (the pull-merge of every
        followee of a stale user: many authors, a few ids each) the store alone."""
        if not authors:
            return []
        sources: dict[int, Source] = {}
        windows: dict[int, CachedTimeline | None] = {}
        versions: dict[int, str] = {}
        if cached:
            prefetched = prefetched or {}
            for author in authors:
                if author in prefetched:
                    windows[author], versions[author] = prefetched[author]
            unread = [a for a in authors if a not in prefetched]
            if unread:
                read, seen = await self.windows.read_many(unread, below=below, limit=limit)
                windows.update(read)
                versions.update(seen)
                stats.redis_round_trips += 1
        for author, window in windows.items():
            if window is not None:
                source = window_pull([t for t, _ in window.entries][:limit], window.size, self.windows.cap, above,
                                     limit)
                if source is not None:
                    sources[author] = source
        missed = [a for a in authors if a not in sources]
        if missed:
            # From the top, ask for a whole window: the store's answer fills the cache too.
            top = cached and below >= MAX_ID
            ask = max(limit, self.windows.cap) if top else limit
            by_author: dict[int, list[int]] = {a: [] for a in missed}
            results = await asyncio.gather(*(store_query(self.cassandra, stats, "authors_tl_below", (group, below, ask))
                                             for group in pull_groups(missed, ask)))
            for rows in results:
                for row in rows:
                    by_author[row.author_id].append(row.tweet_id)
            fills = []
            for author, ids in by_author.items():
                ids.sort(reverse=True)
                sources[author] = pulled_source(ids[:limit], above, limit)
                if top and windows.get(author) is None:
                    fills.append(self.windows.fill(author, versions[author], [(t, author) for t in ids], 0))
            if fills:
                await asyncio.gather(*fills)
                stats.redis_round_trips += 1  # concurrent: one round trip of latency
        return [sources[a] for a in authors]

    async def hydrate(self, ids: Sequence[int], stats: ReadStats | None = None, *, cache: bool = True,
                      prefetched: dict[int, CachedTweet | None] | None = None) -> dict[int, Tweet]:
        """Bodies of the live tweets among ``ids``: Redis first (``prefetched``: what the read's
        first round trip already read of it), one Cassandra query for the rest (Cassandra alone
        when ``cache`` is False)."""
        stats = stats if stats is not None else ReadStats()
        if not ids:
            return {}
        if cache:
            prefetched = prefetched or {}
            wanted = [t for t in ids if t not in prefetched]
            cached = await self.tweets.read(wanted) if wanted else {}
            if wanted:
                stats.redis_round_trips += 1
            cached = {t: prefetched[t] if t in prefetched else cached[t] for t in ids}
        else:
            cached = dict.fromkeys(ids)
        out: dict[int, Tweet] = {}
        misses: list[int] = []
        for tweet_id, tweet in cached.items():
            if tweet is None:
                misses.append(tweet_id)
            elif not tweet.deleted_at:
                out[tweet_id] = Tweet(tweet_id, tweet.author_id, None, None, tweet.rendered)
        stats.tweet_cache_hits += len(ids) - len(misses)
        stats.tweet_cache_misses += len(misses)
        if misses:
            rows = await store_query(self.cassandra, stats, "get_tweets", (misses,))
            posted, deleted = [], []
            for r in rows:
                if r.author_id is not None and r.text is not None:
                    posted.append((r.tweet_id, r.author_id, r.text, r.created_at or 0))
                if r.deleted_at:
                    deleted.append((r.tweet_id, r.deleted_at))
                elif r.author_id is not None and r.text is not None:
                    out[r.tweet_id] = Tweet(r.tweet_id, r.author_id, r.text, r.created_at or 0)
            if cache and (posted or deleted):
                # A post is cached only where nothing is (sinks/redis_tweets.py), so this write
                # cannot undo a delete.
                await self.tweets.write(posted, deleted)
                stats.redis_round_trips += 1
        return out

    # --- the materialized part -----------------------------------------------------------

    async def _materialized(
        self, user_id: int, view: View, cursor: int, need: int, stats: ReadStats
    ) -> tuple[list[tuple[int, int]], bool, str]:
        """Materialized entries in (floor, cursor), newest first; whether that region is exhausted."""
        if view.first is not None and view.first[0] == cursor:
            _, entries, done, source = view.first
            return entries, done, source
        n = need + SLACK
        if view.cached and view.cache_short_at != cursor:
            # n + 1 entries: one more than a chunk tells whether the region goes on.
            cached = await self.timelines.read(user_id, below=None if cursor >= MAX_ID else cursor, limit=n + 1)
            stats.redis_round_trips += 1
            # Still cached, with the same floor: the window is good (else ask Cassandra).
            if cached is not None and cached.floor == view.floor:
                entries = [e for e in cached.entries if e[0] > view.floor]
                chunk = usable_chunk(cursor, entries, view.whole, need, "cache")
                if chunk is not None:
                    return chunk[1], chunk[2], chunk[3]
        rows = await store_query(self.cassandra, stats, "user_tl_below", (user_id, cursor, view.floor, n))
        return [(r.tweet_id, r.author_id) for r in rows], len(rows) < n, "store"

    async def _materialized_source(
        self, user_id: int, view: View, cursor: int, need: int, stats: ReadStats
    ) -> tuple[Source, str]:
        """The materialized chunk as a merge source: authors followed now only, cut at its last row."""
        mat, done, source = await self._materialized(user_id, view, cursor, need, stats)
        followed = await self.views.followed(user_id, view, {a for _, a in mat}, stats)
        ids = [t for t, a in mat if a in followed]
        return Source(ids, None if done or not mat else mat[-1][0]), source

    # --- pages -------------------------------------------------------------------------

    async def page(self, user_id: int, *, limit: int, below: int | None = None, above: int = 0,
                   gate: tuple[RedisTokenBucket, str] | None = None, fill_later: bool = False) -> Page:
        """One page of the home timeline. Redis is a cache: if it fails (down, out of memory,
        a timeout) the page is read again from Cassandra alone, with the same answer.
        ``gate`` (a bucket and a subject): a token is taken in the read's first round trip,
        RateLimited if refused (with Redis failing, the read goes on: the limit fails open).
        ``above`` (``since_id``): only tweets with a larger id; the page ends (``next_below``
        None) once everything above it was returned. ``fill_later``: a miss's cache fill is
        left in ``Page.after`` for the caller to run once it answered (a Redis failure in it is
        logged, not raised), else it is made before this returns."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return await _cache_or_store(f"home timeline of {user_id}",
                                     lambda cache: self._page(user_id, limit, below, above, cache=cache,
                                                                gate=gate, fill_later=fill_later))

    async def _page(self, user_id: int, limit: int, below: int | None, above: int, *, cache: bool,
                    gate: tuple[RedisTokenBucket, str] | None = None, fill_later: bool = False) -> Page:
        stats = ReadStats()
        cursor = MAX_ID if below is None else below
        if cache:
            answer = await self.views.round_trip(user_id, cursor, limit, stats, gate)
            page = plain_hit(answer, cursor, limit, above, self.timelines.cap, stats)
            if page is not None:
                return page
            view = await self.views.open(user_id, cursor, limit, stats, answer=answer)
        else:
            view = await self.views.open_store(user_id, cursor, limit, stats)
        page = await self._read(user_id, view, cursor, limit, above, stats, cache)
        if view.fill is not None:
            # A miss: the page did not need the fill (the longest Redis call of a miss).
            if fill_later:
                page.after = partial(_fill_after_answer, user_id, view.fill)
            else:  # its failure fails the read (a RedisError: read again from Cassandra alone)
                await view.fill()
                stats.redis_round_trips += 1
        return page

    async def _read(self, user_id: int, view: View, cursor: int, limit: int, above: int, stats: ReadStats,
                    cache: bool) -> Page:
        phase = "pull" if view.stale else "materialized"
        source = "rebuilt" if view.stale else ""
        out: list[Tweet] = []
        pulled: set[int] = set()
        first_round = True
        at_end = view.followee_count == 0
        while len(out) < limit and not at_end:
            need = limit - len(out)
            if cursor <= above + 1:
                at_end = True
                break
            if phase == "materialized":
                if cursor <= view.floor + 1:
                    phase = "pull"
                    continue
                celebs = view.celebrities
                per_author = pull_limit(need + SLACK, len(celebs) + 1, first_round)
                if celebs:
                    (mat_source, src), pulls = await asyncio.gather(
                        self._materialized_source(user_id, view, cursor, need, stats),
                        self.pull(celebs, cursor, max(view.floor, above), per_author, stats, cached=cache,
                                  prefetched=view.windows_for(cursor, per_author)),
                    )
                else:  # no task per source when there is one source
                    (mat_source, src), pulls = await self._materialized_source(user_id, view, cursor, need, stats), []
                source = source or src
                merged = merge_sources([mat_source, *pulls])
                pulled.update(t for p in pulls for t in p.ids)
            else:
                if cursor <= 1:
                    at_end = True
                    break
                source = source or "store"
                authors = sorted(await self.views.followees(user_id, view, stats))
                per_author = pull_limit(need + SLACK, len(authors), first_round)
                merged = merge_sources(await self.pull(authors, cursor, above, per_author, stats))
                pulled.update(merged.candidates)
            first_round = False

            # Hydrate the candidates in slices, newest first, until the page is full.
            candidates = merged.candidates
            # Reached ``above``: every source vouched for the ids above it (horizon <= above).
            reached = bool(candidates) and candidates[-1] <= above
            if reached:
                candidates = [t for t in candidates if t > above]
            done_upto = 0
            while done_upto < len(candidates) and len(out) < limit:
                chunk = candidates[done_upto : done_upto + (limit - len(out)) + SLACK]
                bodies = await self.hydrate(chunk, stats, cache=cache, prefetched=view.bodies)
                for tweet_id in chunk:
                    done_upto += 1
                    cursor = tweet_id
                    tweet = bodies.get(tweet_id)
                    if tweet is not None:
                        out.append(tweet)
                        if len(out) == limit:
                            break
            region_done = done_upto == len(candidates) and (merged.horizon is None or reached)
            if len(out) == limit:
                # The end is known without another read when nothing is left anywhere.
                at_end = region_done and (reached or phase == "pull" or view.floor == 0)
                break
            if region_done and reached:
                at_end = True
            elif region_done:
                if phase == "materialized":
                    # Nothing left above the floor: continue below it by pull-merge.
                    phase, cursor = "pull", min(cursor, view.floor + 1)
                else:
                    at_end = True
            elif merged.horizon is not None:
                cursor = min(cursor, merged.horizon)  # everything at or above it was seen
        next_below = None if at_end or len(out) < limit else cursor
        if not source:
            source = "cache" if view.cached else "store"
        return Page(out, next_below, source, pulled & {t.tweet_id for t in out}, stats)

    async def all_ids(self, user_id: int, *, page_size: int = 200) -> list[int]:
        """Every tweet id of the home timeline, paging to the real end (for verification)."""
        ids: list[int] = []
        below = None
        while True:
            page = await self.page(user_id, limit=page_size, below=below)
            ids.extend(t.tweet_id for t in page.tweets)
            if page.next_below is None:
                return ids
            below = page.next_below

    async def author_page(self, author_id: int, *, limit: int, below: int | None = None, above: int = 0) -> Page:
        """An author's own tweets, newest first (``author_timeline``), deleted ones dropped;
        from Cassandra alone if Redis fails."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return await _cache_or_store(f"author timeline of {author_id}",
                                     lambda cache: self._author_page(author_id, limit, below, above, cache=cache))

    async def _author_page(self, author_id: int, limit: int, below: int | None, above: int, *,
                           cache: bool) -> Page:
        stats = ReadStats()
        cursor = MAX_ID if below is None else below
        out: list[Tweet] = []
        at_end = False
        while len(out) < limit and not at_end:
            n = limit - len(out) + SLACK
            rows = await store_query(self.cassandra, stats, "author_tl_below", (author_id, cursor, n))
            ids = [r.tweet_id for r in rows]
            reached = bool(ids) and ids[-1] <= above
            if reached:
                ids = [t for t in ids if t > above]
            bodies = await self.hydrate(ids, stats, cache=cache)
            consumed = 0
            for tweet_id in ids:
                consumed += 1
                cursor = tweet_id
                tweet = bodies.get(tweet_id)
                if tweet is not None:
                    out.append(tweet)
                    if len(out) == limit:
                        break
            at_end = (len(rows) < n or reached) and consumed == len(ids)
        next_below = None if at_end or len(out) < limit else cursor
        return Page(out, next_below, "store", set(), stats)
