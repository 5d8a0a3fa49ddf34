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
reference says: the newest tweets of current followees, minus deletes.

What a read costs
-----------------

* Cache hit: one Redis call (a Lua script, so its parts agree) reads the timeline
  window and, from the cached following list, whether each window author is
  followed, the list's size and the followed celebrities (``SINTER`` with the
  celebrity set) - never the whole list, so the cost does not grow with the
  number of followees; one pipeline of tweet hashes (``RedisTweets``) hydrates.
  Cassandra is asked only for bodies missing from Redis (one ``IN`` query) and
  for celebrity pulls (one ``IN ... PER PARTITION LIMIT`` query per group of
  authors, groups concurrent). The whole list is read only for a pull-merge.
* Timeline cache miss: ``timeline_meta`` and the newest ``cap`` rows of
  ``user_timeline`` are read concurrently, and the cache is refilled
  (version-checked) unless the user is stale.
* Following cache miss: ``following`` from Cassandra, refilled version-checked;
  stage 2 invalidates the cached list after it writes ``following``
  (:meth:`RedisFollowing.invalidate`, called from ``RecipientBatch.apply``).

Why a cached timeline needs no ``timeline_meta`` read: stage 2 writes the meta
(stale flag, floor) to Cassandra *before* it invalidates the cached timeline,
and the reader fills the cache only if the timeline version it read *before*
reading the meta is unchanged. So a cached timeline never belongs to a stale
user, and its sentinel carries the current floor.

This relies on the rule documented in ``sinks/redis_timeline.py``: a cached key
holds the newest ``cap`` entries of the Cassandra timeline, so a key with fewer
than ``cap`` entries holds all of it.
"""
from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, NamedTuple, Sequence

import redis.exceptions
from redis.asyncio import Redis

from policies.timeline import merge_desc
from schemas.events import INT64_MAX as MAX_ID
from settings import Settings
from sinks.cassandra import CassandraStore
from sinks.redis_celebrities import RedisCelebrities
from sinks.redis_following import RedisFollowing
from sinks.redis_timeline import SENTINEL_ID, RedisTimelines, member, parse_member, version_token
from sinks.redis_tweets import RedisTweets

log = logging.getLogger(__name__)
# Extra entries asked for per chunk, so a few deleted tweets do not cost another round.
SLACK = 5
# The driver's default fetch size: one IN query must fit in one result page.
CASSANDRA_PAGE_ROWS = 5000
# Authors per IN query of a pull (groups run concurrently).
PULL_GROUP_MAX = 100
# Fewest ids asked per author in the first round of a pull.
PULL_MIN = 4

# The first round trip of a read, atomic so that its parts agree with each other.
# KEYS: timeline, timeline version, following set, following version, celebrity set,
# celebrity set version.
# ARGV: upper ZREVRANGEBYLEX bound of the window, window size, a fresh version token,
# version ttl.
# Returns: window, lowest member (the sentinel), timeline size, timeline version,
# following set size, per window member whether its author is followed, the
# followed celebrities, following version, whether the celebrity set is loaded (it
# holds '0'), its version. Only the window's authors are looked up, so the cost does
# not grow with the number of followees.
#
# A version key that does not exist is created here with the reader's token: a fill
# compares the version it saw with the one it finds, and "absent" cannot be a version,
# since a key evicted or expired after a writer bumped it would be absent again (and the
# fill would install what was read before that write).
_OPEN = """
local function version(key)
  local v = redis.call('GET', key)
  if v then return v end
  redis.call('SET', key, ARGV[3], 'EX', ARGV[4])
  return ARGV[3]
end
local window = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], '-', 'LIMIT', 0, tonumber(ARGV[2]))
local lowest = redis.call('ZRANGE', KEYS[1], 0, 0)
local size = redis.call('ZCARD', KEYS[1])
local following = redis.call('SCARD', KEYS[3])
local flags = {}
local celebs = {}
if following > 0 then
  for i, m in ipairs(window) do
    flags[i] = redis.call('SISMEMBER', KEYS[3], string.match(m, ':(%d+)$') or '')
  end
  celebs = redis.call('SINTER', KEYS[3], KEYS[5])
end
local loaded = redis.call('SISMEMBER', KEYS[5], '0')
local home_v = version(KEYS[2])
local following_v = version(KEYS[4])
local celebs_v = ''
if loaded == 0 then celebs_v = version(KEYS[6]) end
return {window, lowest, size, home_v, following, flags, celebs, following_v, loaded, celebs_v}
"""

# --- pure helpers --------------------------------------------------------------------


class Source(NamedTuple):
    """Ids one source returned for a region, and how far down it vouches for them."""

    ids: Sequence[int]  # descending
    # The source is complete for ids >= this one; None: complete down to the region's bottom.
    vouches_to: int | None


class Merged(NamedTuple):
    candidates: list[int]  # every id >= horizon of every source, descending, unique
    horizon: int | None  # None: every source was exhausted (candidates is the whole region)


def merge_sources(sources: Iterable[Source]) -> Merged:
    """Merge sources that were each cut somewhere; keep only the part all of them vouch for.

    A truncated source says nothing about ids below its last one, so the merge is
    exact only down to the highest of those cut points (the horizon).
    """
    sources = list(sources)
    horizon = max((s.vouches_to for s in sources if s.vouches_to is not None), default=None)
    merged = merge_desc(*(s.ids for s in sources), limit=None)
    if horizon is not None:
        merged = [t for t in merged if t >= horizon]
    return Merged(merged, horizon)


def pull_limit(need: int, authors: int, first_round: bool) -> int:
    """Ids to ask per author: enough for ``need`` from the merge of ``authors`` timelines.

    The first round asks each author for about twice its fair share (a merge of
    many similar timelines takes a few from each); later rounds, which only
    happen when that guess was short, ask for the whole ``need``.
    """
    if need < 1:
        raise ValueError(f"need must be >= 1, got {need}")
    if not first_round or authors <= 1:
        return need
    return min(need, max(PULL_MIN, math.ceil(2 * need / authors) + 1))


def pull_groups(authors: Sequence[int], per_author: int) -> list[list[int]]:
    """Authors split so that one IN query returns at most one page of rows."""
    size = max(1, min(PULL_GROUP_MAX, CASSANDRA_PAGE_ROWS // max(1, per_author)))
    return [list(authors[i : i + size]) for i in range(0, len(authors), size)]


def window_entries(window: Iterable[bytes | str], floor: int) -> list[tuple[int, int]]:
    """Parsed cached members above ``floor`` (drops the sentinel), in the given order."""
    return [e for e in map(parse_member, window) if e[0] > floor]


def usable_chunk(
    cursor: int, entries: list[tuple[int, int]], complete: bool, need: int, source: str
) -> tuple[int, list[tuple[int, int]], bool, str] | None:
    """A chunk of at most ``need + SLACK`` entries below ``cursor`` if ``entries`` can answer it.

    ``entries`` are the newest entries below the cursor of a copy that holds the
    whole region when ``complete``, else only a prefix of it (usable when it
    has at least ``need`` entries). None: ask the next store.
    """
    n = need + SLACK
    if len(entries) > n:
        return cursor, entries[:n], False, source
    if complete or len(entries) >= need:
        return cursor, entries, complete, source
    return None


def lex_below(cursor: int) -> str:
    """The ZREVRANGEBYLEX bound for cached members with ids strictly below ``cursor``."""
    return "+" if cursor >= MAX_ID else "(" + member(cursor, 0).partition(":")[0]


# --- data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tweet:
    tweet_id: int
    author_id: int
    text: str
    created_at: int


@dataclass
class ReadStats:
    """What one read cost and which caches answered (for metrics and tests)."""

    redis_round_trips: int = 0
    cassandra_queries: int = 0
    timeline_cache: str | None = None  # "hit", "miss", or None (not consulted)
    following_cache: str | None = None  # "hit" or "miss"
    tweet_cache_hits: int = 0
    tweet_cache_misses: int = 0
    cache_bypassed: bool = False  # Redis failed: the page was read from Cassandra alone


@dataclass
class Page:
    tweets: list[Tweet]
    next_below: int | None  # pass as ``below`` for the next page; None at the real end
    source: str  # "cache", "store" or "rebuilt"
    pulled: set[int] = field(default_factory=set)  # tweet ids that came from pulls
    stats: ReadStats = field(default_factory=ReadStats)


@dataclass
class _View:
    """The user's state at the start of a read."""

    followee_count: int
    celebrities: list[int]
    floor: int
    stale: bool
    cached: bool  # the timeline is in Redis
    whole: bool  # ... and that copy holds the whole materialized timeline
    # Every followee, when known (read from Cassandra, or loaded for a pull-merge).
    followees: frozenset[int] | None = None
    # Whether the user follows an author, for the authors looked up so far.
    follows: dict[int, bool] = field(default_factory=dict)
    # The first chunk, if the first round trip answered it: (cursor, entries, done, source).
    first: tuple[int, list[tuple[int, int]], bool, str] | None = None
    # The cursor at which the cached copy was seen to be too short (ask Cassandra directly).
    cache_short_at: int | None = None


async def _cache_or_store(what: str, read: Callable[[bool], Awaitable[Page]]) -> Page:
    """``read(cache=True)``; if Redis fails (down, out of memory, a timeout), ``read(False)``:
    the same page from Cassandra alone. Redis is a cache, never the reason a read fails."""
    try:
        return await read(True)
    except redis.exceptions.RedisError as exc:
        log.warning("%s read without Redis: %r", what, exc)
        page = await read(False)
        page.stats.cache_bypassed = True
        return page


def _decode(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else (raw or "")


class HomeTimelineReader:
    def __init__(
        self,
        settings: Settings,
        cassandra: CassandraStore,
        timelines: RedisTimelines,
        *,
        tweets: RedisTweets | None = None,
        following: RedisFollowing | None = None,
    ) -> None:
        self.settings = settings
        self.cassandra = cassandra
        self.timelines = timelines
        self.redis = timelines.redis
        self.tweets = tweets or RedisTweets(self.redis, prefix=settings.redis_prefix)
        self.following_cache = following or RedisFollowing(
            self.redis, prefix=settings.redis_prefix, ttl_s=settings.timeline_ttl_s
        )
        self.celebrity_cache = RedisCelebrities(self.redis, prefix=settings.redis_prefix)
        self._open_script = self.redis.register_script(_OPEN)

    # --- stores ---------------------------------------------------------------------

    async def _cql(self, stats: ReadStats, name: str, params: Sequence[Any]) -> list:
        stats.cassandra_queries += 1
        return await self.cassandra.execute(name, params)

    async def pull(
        self, authors: Sequence[int], below: int, above: int, limit: int, stats: ReadStats
    ) -> list[Source]:
        """Each author's newest ids in (above, below), at most ``limit``, as merge sources."""
        if not authors:
            return []
        groups = pull_groups(authors, limit)
        results = await asyncio.gather(
            *(self._cql(stats, "authors_tl_below", (group, below, limit)) for group in groups)
        )
        by_author: dict[int, list[int]] = {a: [] for a in authors}
        for rows in results:
            for row in rows:
                by_author[row.author_id].append(row.tweet_id)
        sources = []
        for ids in by_author.values():
            ids.sort(reverse=True)
            kept = [t for t in ids if t > above]
            sources.append(Source(kept, kept[-1] if len(kept) == limit else None))
        return sources

    async def hydrate(self, ids: Sequence[int], stats: ReadStats | None = None, *, cache: bool = True) -> dict[int, Tweet]:
        """Bodies of the live tweets among ``ids``: Redis first, one Cassandra query for the rest
        (Cassandra alone when ``cache`` is False)."""
        stats = stats if stats is not None else ReadStats()
        if not ids:
            return {}
        if cache:
            cached = await self.tweets.read(ids)
            stats.redis_round_trips += 1
        else:
            cached = dict.fromkeys(ids)
        out: dict[int, Tweet] = {}
        misses: list[int] = []
        for tweet_id, tweet in cached.items():
            if tweet is None:
                misses.append(tweet_id)
            elif not tweet.deleted_at:
                out[tweet_id] = Tweet(tweet_id, tweet.author_id, tweet.text, tweet.created_at)
        stats.tweet_cache_hits += len(ids) - len(misses)
        stats.tweet_cache_misses += len(misses)
        if misses:
            rows = await self._cql(stats, "get_tweets", (misses,))
            posted, deleted = [], []
            for r in rows:
                if r.author_id is not None and r.text is not None:
                    posted.append((r.tweet_id, r.author_id, r.text, r.created_at or 0))
                if r.deleted_at:
                    deleted.append((r.tweet_id, r.deleted_at))
                elif r.author_id is not None and r.text is not None:
                    out[r.tweet_id] = Tweet(r.tweet_id, r.author_id, r.text, r.created_at or 0)
            if cache and (posted or deleted):
                # A delete only sets a field of the hash, so this write cannot undo one.
                await self.tweets.write(posted, deleted)
                stats.redis_round_trips += 1
        return out

    # --- the user's view ---------------------------------------------------------------

    async def _open_store(self, user_id: int, cursor: int, need: int, stats: ReadStats) -> _View:
        """The user's view from Cassandra alone (Redis failed): following list, celebrities,
        meta and the newest rows, concurrently; nothing is cached."""
        following, celebrities, meta, rows = await asyncio.gather(
            self.cassandra.execute_all("get_following", (user_id,)),
            self.cassandra.execute_all("list_celebrities", (0,)),
            self._cql(stats, "get_meta", (user_id,)),
            self._cql(stats, "user_tl_below", (user_id, MAX_ID, 0, self.timelines.cap)),
        )
        stats.cassandra_queries += 2
        followees = frozenset(r.followee_id for r in following)
        view = _View(len(followees), sorted(followees.intersection(r.author_id for r in celebrities)),
                     (meta[0].floor or 0) if meta else 0, bool(meta[0].stale) if meta else False,
                     cached=False, whole=False, followees=followees)
        if not view.stale:
            entries = [(r.tweet_id, r.author_id) for r in rows if r.tweet_id > view.floor]
            below = [e for e in entries if e[0] < cursor]
            view.first = usable_chunk(cursor, below, len(entries) < self.timelines.cap, need, "store")
        return view

    async def _open(self, user_id: int, cursor: int, need: int, stats: ReadStats) -> _View:
        """One Redis call for the timeline window and the following facts; Cassandra for misses."""
        n = need + SLACK
        following = self.following_cache
        celebrity_cache = self.celebrity_cache
        keys = [self.timelines.key(user_id), self.timelines.version_key(user_id),
                following.key(user_id), following.version_key(user_id),
                celebrity_cache.key(), celebrity_cache.version_key()]
        (window, lowest, card, home_version, followee_card, flags, celebs, following_version,
         celebs_loaded, celebs_version) = await self._open_script(
            keys=keys, args=[lex_below(cursor), n + 1, version_token(), self.timelines.ttl_s])
        stats.redis_round_trips += 1

        view = _View(max(0, followee_card - 1), [], 0, False, cached=False, whole=False)
        if lowest:
            sentinel_tid, sentinel_floor = parse_member(lowest[0])
            view.cached = sentinel_tid == SENTINEL_ID  # else foreign data under our key: a miss
        stats.timeline_cache = "hit" if view.cached else "miss"
        if view.cached:
            view.floor = sentinel_floor
            view.whole = card - 1 < self.timelines.cap
            view.first = usable_chunk(cursor, window_entries(window, view.floor), view.whole, need, "cache")
            if view.first is None:
                view.cache_short_at = cursor

        following_hit = followee_card > 0
        stats.following_cache = "hit" if following_hit else "miss"
        if following_hit:
            for raw, flag in zip(window, flags):
                view.follows[parse_member(raw)[1]] = bool(flag)
            view.celebrities = sorted(int(c) for c in celebs if int(c) != 0)

        reads: dict[str, Any] = {}
        if not celebs_loaded:
            # The celebrity set was lost (restart, flush, eviction): Cassandra has it.
            stats.cassandra_queries += 1
            reads["celebrities"] = self.cassandra.execute_all("list_celebrities", (0,))
        if not following_hit:
            reads["following"] = self._cql(stats, "get_following", (user_id,))
        if not view.cached:
            reads["meta"] = self._cql(stats, "get_meta", (user_id,))
            # The newest rows whatever the floor (rows at or below it may linger).
            reads["rows"] = self._cql(stats, "user_tl_below", (user_id, MAX_ID, 0, self.timelines.cap))
        if not reads:
            return view
        results = dict(zip(reads, await asyncio.gather(*reads.values())))
        every_celebrity: list[int] | None = None
        if not celebs_loaded:
            every_celebrity = sorted(r.author_id for r in results["celebrities"])

        fill_timeline = None
        if not view.cached:
            meta = results["meta"]
            view.floor = (meta[0].floor or 0) if meta else 0
            view.stale = bool(meta[0].stale) if meta else False
            rows = [(r.tweet_id, r.author_id) for r in results["rows"] if r.tweet_id > view.floor]
            if not view.stale:
                complete = len(rows) < self.timelines.cap
                below = [e for e in rows if e[0] < cursor]
                view.first = usable_chunk(cursor, below, complete, need, "store")
                fill_timeline = self.timelines.fill(user_id, _decode(home_version), rows, view.floor)
        fill_following = None
        if not following_hit:
            followees = sorted(r.followee_id for r in results["following"])
            view.followees = frozenset(followees)
            view.followee_count = len(followees)
            fill_following = self._fill_following(user_id, _decode(following_version), followees)
        # The first chunk came from Cassandra: check its authors alongside the fills.
        checked: list[int] = []
        if following_hit and view.first is not None:
            checked = sorted({a for _, a in view.first[1]})
        check = self.following_cache.check(user_id, checked) if checked else None
        fill_celebrities = check_celebrities = None
        if every_celebrity is not None:
            fill_celebrities = self.celebrity_cache.fill(_decode(celebs_version), every_celebrity)
            if following_hit and every_celebrity:
                check_celebrities = self.following_cache.check(user_id, every_celebrity)
        calls = {"timeline": fill_timeline, "following": fill_following, "check": check,
                 "celebrities": fill_celebrities, "followed_celebrities": check_celebrities}
        calls = {k: c for k, c in calls.items() if c is not None}
        if calls:
            done = dict(zip(calls, await asyncio.gather(*calls.values())))
            stats.redis_round_trips += 1  # concurrent: one round trip of latency
            if "following" in done:
                if done["following"] is None and every_celebrity is None:
                    # The celebrity set went missing after the first round trip: Cassandra.
                    every_celebrity = sorted(r.author_id for r in
                                             await self.cassandra.execute_all("list_celebrities", (0,)))
                    stats.cassandra_queries += 1
                view.celebrities = done["following"] or []
            found = done.get("check")
            if found is not None:  # None: the list was dropped meanwhile; _followed reloads it
                view.follows.update((a, a in found) for a in checked)
        if every_celebrity is not None:
            # The set was not loaded: what the script and the fill said about it is void.
            if view.followees is not None:
                view.celebrities = sorted(view.followees.intersection(every_celebrity))
            elif every_celebrity:
                followed = done.get("followed_celebrities")
                if followed is None:  # the cached list was dropped meanwhile
                    followed = await self._followees(user_id, view, stats)
                view.celebrities = sorted(followed.intersection(every_celebrity))
            else:
                view.celebrities = []
        return view

    async def _followed(self, user_id: int, view: _View, authors: set[int], stats: ReadStats) -> set[int]:
        """The authors among ``authors`` that the user follows now."""
        if view.followees is not None:
            return authors & view.followees
        unknown = [a for a in authors if a not in view.follows]
        if unknown:
            found = await self.following_cache.check(user_id, unknown)
            stats.redis_round_trips += 1
            if found is None:  # the cached list was dropped meanwhile (a follow change)
                return authors & await self._followees(user_id, view, stats)
            view.follows.update((a, a in found) for a in unknown)
        return {a for a in authors if view.follows[a]}

    async def _followees(self, user_id: int, view: _View, stats: ReadStats) -> frozenset[int]:
        """Every followee (for a pull-merge): the cached list, else Cassandra (no fill here)."""
        if view.followees is None:
            cached = await self.following_cache.members(user_id)
            stats.redis_round_trips += 1
            if cached is None:
                cached = {r.followee_id for r in await self._cql(stats, "get_following", (user_id,))}
            view.followees = frozenset(cached)
        return view.followees

    async def _fill_following(self, user_id: int, seen_version: str, followees: list[int]) -> list[int] | None:
        """Cache the list (version-checked) and return the celebrities in it: one round trip.
        None when the celebrity set is not loaded (it may have been evicted since the read began)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            await self.following_cache.queue_fill(pipe, user_id, seen_version, followees)
            pipe.sismember(self.celebrity_cache.key(), "0")
            if followees:
                pipe.smismember(self.celebrity_cache.key(), followees)
            results = await pipe.execute()
        if not results[1]:
            return None
        flags = results[2] if followees else []
        return [a for a, flag in zip(followees, flags) if flag]

    async def _materialized(
        self, user_id: int, view: _View, cursor: int, need: int, stats: ReadStats
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
        rows = await self._cql(stats, "user_tl_below", (user_id, cursor, view.floor, n))
        return [(r.tweet_id, r.author_id) for r in rows], len(rows) < n, "store"

    async def _materialized_source(
        self, user_id: int, view: _View, cursor: int, need: int, stats: ReadStats
    ) -> tuple[Source, str]:
        """The materialized chunk as a merge source: authors followed now only, cut at its last row."""
        mat, done, source = await self._materialized(user_id, view, cursor, need, stats)
        followed = await self._followed(user_id, view, {a for _, a in mat}, stats)
        ids = [t for t, a in mat if a in followed]
        return Source(ids, None if done or not mat else mat[-1][0]), source

    # --- pages -------------------------------------------------------------------------

    async def page(self, user_id: int, *, limit: int, below: int | None = None) -> Page:
        """One page of the home timeline. Redis is a cache: if it fails (down, out of memory,
        a timeout) the page is read again from Cassandra alone, with the same answer."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return await _cache_or_store(f"home timeline of {user_id}",
                                     lambda cache: self._page(user_id, limit, below, cache=cache))

    async def _page(self, user_id: int, limit: int, below: int | None, *, cache: bool) -> Page:
        stats = ReadStats()
        cursor = MAX_ID if below is None else below
        if cache:
            view = await self._open(user_id, cursor, limit, stats)
        else:
            view = await self._open_store(user_id, cursor, limit, stats)
        phase = "pull" if view.stale else "materialized"
        source = "rebuilt" if view.stale else ""
        out: list[Tweet] = []
        pulled: set[int] = set()
        first_round = True
        at_end = view.followee_count == 0
        while len(out) < limit and not at_end:
            need = limit - len(out)
            if phase == "materialized":
                if cursor <= view.floor + 1:
                    phase = "pull"
                    continue
                celebs = view.celebrities
                per_author = pull_limit(need + SLACK, len(celebs) + 1, first_round)
                (mat_source, src), pulls = await asyncio.gather(
                    self._materialized_source(user_id, view, cursor, need, stats),
                    self.pull(celebs, cursor, view.floor, per_author, stats),
                )
                source = source or src
                merged = merge_sources([mat_source, *pulls])
                pulled.update(t for p in pulls for t in p.ids)
            else:
                if cursor <= 1:
                    at_end = True
                    break
                source = source or "store"
                authors = sorted(await self._followees(user_id, view, stats))
                per_author = pull_limit(need + SLACK, len(authors), first_round)
                merged = merge_sources(await self.pull(authors, cursor, 0, per_author, stats))
                pulled.update(merged.candidates)
            first_round = False

            # Hydrate the candidates in slices, newest first, until the page is full.
            candidates = merged.candidates
            done_upto = 0
            while done_upto < len(candidates) and len(out) < limit:
                chunk = candidates[done_upto : done_upto + (limit - len(out)) + SLACK]
                bodies = await self.hydrate(chunk, stats, cache=cache)
                for tweet_id in chunk:
                    done_upto += 1
                    cursor = tweet_id
                    tweet = bodies.get(tweet_id)
                    if tweet is not None:
                        out.append(tweet)
                        if len(out) == limit:
                            break
            region_done = done_upto == len(candidates) and merged.horizon is None
            if len(out) == limit:
                # The end is known without another read when nothing is left anywhere.
                at_end = region_done and (phase == "pull" or view.floor == 0)
                break
            if region_done:
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

    async def author_page(self, author_id: int, *, limit: int, below: int | None = None) -> Page:
        """An author's own tweets, newest first (``author_timeline``), deleted ones dropped;
        from Cassandra alone if Redis fails."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return await _cache_or_store(f"author timeline of {author_id}",
                                     lambda cache: self._author_page(author_id, limit, below, cache=cache))

    async def _author_page(self, author_id: int, limit: int, below: int | None, *, cache: bool) -> Page:
        stats = ReadStats()
        cursor = MAX_ID if below is None else below
        out: list[Tweet] = []
        at_end = False
        while len(out) < limit and not at_end:
            n = limit - len(out) + SLACK
            rows = await self._cql(stats, "author_tl_below", (author_id, cursor, n))
            ids = [r.tweet_id for r in rows]
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
            at_end = len(ids) < n and consumed == len(ids)
        next_below = None if at_end or len(out) < limit else cursor
        return Page(out, next_below, "store", set(), stats)
