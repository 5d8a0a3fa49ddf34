"""A user's view at the start of a read: the first round trip, and what the user follows.

:meth:`UserViews.open` makes one Redis call (a Lua script, so its parts agree) that
takes the reader's rate-limit token (the query service passes its bucket), reads the
timeline window, the tweet bodies it names, and, from the cached following list, whether each window
author is followed, the list's size and the followed celebrities (``SINTER`` with
the celebrity set) - never the whole list, so the cost does not grow with the
number of followees. The whole list is read only for a pull-merge
(:meth:`UserViews.followees`).

* Timeline cache miss: ``timeline_meta`` and the newest ``cap`` rows of
  ``user_timeline`` are read concurrently, and the cache is refilled
  (version-checked) unless the user is stale - once the page is known
  (``View.fill``): the follow check and the bodies of the first chunk go first, in one
  round trip.
* Following cache miss: ``following`` from Cassandra, refilled version-checked;
  stage 2 invalidates the cached list after it writes ``following``
  (:meth:`RedisFollowing.invalidate`, called from ``RecipientBatch.write``).
* Celebrity set not loaded (restart, flush, eviction): read from Cassandra and
  refilled version-checked.

Why a cached timeline needs no ``timeline_meta`` read: stage 2 writes the meta
(stale flag, floor) to Cassandra *before* it invalidates the cached timeline,
and the reader fills the cache only if the timeline version it read *before*
reading the meta is unchanged. So a cached timeline never belongs to a stale
user, and its sentinel carries the current floor.

:meth:`UserViews.open_store` is the same view from Cassandra alone, when Redis fails.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Awaitable, Callable

from api.ratelimit import TAKE_FUNCTION_LUA, RateLimited, RedisTokenBucket
from policies.timeline import PULL_MIN, SLACK, usable_chunk
from query.page import Page, ReadStats, Tweet, store_query
from query.view_cluster import VERSION_LUA, WINDOW_LUA, ClusterScripts, open_cluster
from schemas.events import INT64_MAX as MAX_ID
from sinks.cassandra import CassandraStore
from sinks.redis_celebrities import RedisCelebrities
from sinks.redis_client import is_cluster
from sinks.redis_following import RedisFollowing
from sinks.redis_pipelined import PipelinedRedis
from sinks.redis_timeline import (
    SENTINEL_ID, WINDOW_READ_LUA, CachedTimeline, RedisTimelines, decode_version, lex_below, parse_member,
    parse_window, version_token, window_entries,
)
from sinks.redis_tweets import CachedTweet, RedisTweets, body_parts, parse_body

# The first round trip of a read, atomic so that its parts agree with each other.
# KEYS: timeline, timeline version, following set, following version, celebrity set,
# celebrity set version, and the reader's rate-limit bucket.
# ARGV: upper ZREVRANGEBYLEX bound of the window, window size, a fresh version token,
# version ttl, the prefix of tweet body keys, the key and version key prefixes of the
# celebrities' windows (``RedisTimelines.author_windows``; '' to read none), PULL_MIN, '1' to
# take a token from the bucket first (else ''), then the bucket's ARGV (api.ratelimit.TAKE_LUA).
# Returns: {'limited', take's answer} when the bucket refused the read (nothing else is
# read), else: window, lowest member (the sentinel), timeline size, timeline version,
# following set size, per window member whether its author is followed, the
# followed celebrities, following version, whether the celebrity set is loaded (it
# holds '0'), its version, per window member its tweet body (sinks.redis_tweets' value, nil
# when not cached; '' - not read - for the sentinel, for authors not followed, and, when
# celebrities are pulled, for members below the newest ``window size - 1`` of the merge; all
# bodies are one MGET), and the celebrities' pulls
# (empty when none): {ids read per author, the authors, per author the window below the
# bound as ``read_window`` reads it (sinks/redis_timeline.py: members, lowest, size, version), the ids
# and bodies of the pulled tweets among the newest ``window size - 1`` of the merge of the
# followed window members and the pulls}. Only the window's authors are looked up, so the
# cost does not grow with the number of followees.
#
# The ids read per author mirror ``policies.timeline.pull_limit`` of a first round (window
# size - 1 is the reader's need + SLACK); the reader uses the pulls only when its own pull
# asks for no more (else it reads the windows itself), and reads any body not answered here:
# the script decides what is worth reading, never what a page holds.
#
# A version key that does not exist is created here with the reader's token: a fill
# compares the version it saw with the one it finds, and "absent" cannot be a version,
# since a key evicted or expired after a writer bumped it would be absent again (and the
# fill would install what was read before that write).
#
# The body and window keys are derived from ids, not passed in KEYS: one server only. On a
# Redis Cluster the same answer, without the pulls, takes two round trips (query/view_cluster.py).
_OPEN = TAKE_FUNCTION_LUA + VERSION_LUA + WINDOW_READ_LUA + """
if ARGV[9] == '1' then
  local gate = take({KEYS[7]}, {ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15]})
  if gate[1] == 0 then return {'limited', gate} end
end
""" + WINDOW_LUA + """
local celebs = {}
if following > 0 then celebs = redis.call('SINTER', KEYS[3], KEYS[5]) end
local loaded = redis.call('SISMEMBER', KEYS[5], '0')
local home_v = version(KEYS[2], ARGV[3], ARGV[4])
local following_v = version(KEYS[4], ARGV[3], ARGV[4])
local celebs_v = ''
if loaded == 0 then celebs_v = version(KEYS[6], ARGV[3], ARGV[4]) end
local merged = {}  -- the members whose bodies are read: the followed window's, then the newest of the merge
local followed, seen = {}, {}
for i, m in ipairs(window) do
  local id = string.match(m, '^0*(%d+):')
  if id and id ~= '0' and (following == 0 or flags[i] == 1) then
    merged[#merged + 1] = m
    followed[i] = id  -- the tweet id: its body's key below
    seen[m] = true
  end
end
local pulls, pulled_ids = {}, {}
local authors = {}
if ARGV[6] ~= '' and loaded == 1 then
  for _, c in ipairs(celebs) do if c ~= '0' then authors[#authors + 1] = c end end
end
if #authors > 0 then
  local n = tonumber(ARGV[2]) - 1
  local per = math.min(n, math.max(tonumber(ARGV[8]), math.ceil(2 * n / (#authors + 1)) + 1))
  local windows, pulled = {}, {}
  for i, a in ipairs(authors) do
    windows[i] = read_window(ARGV[6] .. a .. '}', ARGV[7] .. a .. '}', ARGV[1], per + 1, ARGV[3], ARGV[4])
    for j, m in ipairs(windows[i][1]) do
      if j <= per and not seen[m] and string.match(m, '^0*(%d+):') ~= '0' then
        merged[#merged + 1] = m
        pulled[m] = true
        seen[m] = true  -- once in the merge (a tweet pushed before its author was a celebrity)
      end
    end
  end
  table.sort(merged)  -- ascending, walked from the end (a Lua comparator costs ~10% of the script)
  local top = {}
  for i = #merged, math.max(1, #merged - n + 1), -1 do
    local m = merged[i]
    top[m] = true
    if pulled[m] then pulled_ids[#pulled_ids + 1] = string.match(m, '^0*(%d+):') end
  end
  for i, m in ipairs(window) do
    if not top[m] then followed[i] = nil end  -- below what the page can show
  end
  pulls = {per, authors, windows, pulled_ids, {}}
end
-- Every body in one MGET (sinks/redis_tweets.py): the window's followed members', then the pulled tweets'.
local keys, at = {}, {}
local bodies = {}
for i, m in ipairs(window) do
  bodies[i] = ''  -- not read
  if followed[i] then keys[#keys + 1] = ARGV[5] .. followed[i]; at[#keys] = i end
end
local read = #keys
for _, id in ipairs(pulled_ids) do keys[#keys + 1] = ARGV[5] .. id end
if #keys > 0 then
  local got = redis.call('MGET', unpack(keys))
  for j = 1, read do bodies[at[j]] = got[j] end
  for j = read + 1, #keys do pulls[5][j - read] = got[j] end
end
return {window, lowest, size, home_v, following, flags, celebs, following_v, loaded, celebs_v, bodies, pulls}
"""


@dataclass
class View:
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
    # Tweet bodies the first round trip read (the window's, followed authors only): None
    # for a body not cached.
    bodies: dict[int, CachedTweet | None] = field(default_factory=dict)
    # A miss's timeline fill, not yet started: the reader runs it once the page is known
    # (or leaves it to its caller for after the answer, ``HomeTimelineReader.page``).
    fill: Callable[[], Awaitable[bool]] | None = None
    # The celebrities' windows the first round trip read (author: (window or None when not
    # cached, its version)), below ``pulls_at[0]``, ``pulls_at[1]`` ids each.
    windows: dict[int, tuple[CachedTimeline | None, str]] = field(default_factory=dict)
    pulls_at: tuple[int, int] | None = None

    def windows_for(self, below: int, limit: int) -> dict[int, tuple[CachedTimeline | None, str]]:
        """The windows the first round trip read, if a pull below ``below`` of ``limit`` ids
        per author can use them (read below the same cursor, at least as many ids), else none."""
        if self.pulls_at is None or self.pulls_at[0] != below or limit > self.pulls_at[1]:
            return {}
        return self.windows


def plain_hit(answer: list[Any], cursor: int, limit: int, above: int, cap: int,
              stats: ReadStats | None = None) -> Page | None:
    """The page of a read that the first round trip answered alone, or None.

    A plain cache hit - the timeline and the following list cached, no celebrities
    followed (none to pull), every needed tweet body in the answer, the page inside the
    window - is most reads. Its page is computed here straight from the answer, with the
    same result (tweets, ``next_below``, ``source``) as :meth:`HomeTimelineReader.page`'s
    general path (``tests/unit/test_plain_hit.py`` compares the two), which answers
    everything else (None) from the same answer, without a second round trip."""
    (window, lowest, card, _, followee_card, flags, celebs, _, celebs_loaded, _, bodies, _) = answer
    if not lowest or followee_card <= 1 or not celebs_loaded or any(int(c) != 0 for c in celebs):
        return None
    sentinel_tid, floor = parse_member(lowest[0])
    if sentinel_tid != SENTINEL_ID or cursor <= above + 1 or cursor <= floor + 1:
        return None
    entries = [parse_member(m) for m in window]
    first = usable_chunk(cursor, window_entries(entries, floor), card - 1 < cap, limit, "cache")
    if first is None:
        return None
    _, chunk, done, _ = first
    followed = {a for (_, a), flag in zip(entries, flags) if flag}
    body_of = {t: b for (t, _), b in zip(entries, bodies) if b}
    candidates: list[int] = []
    for tweet_id, author_id in chunk:  # unique, as policies.timeline.merge_desc makes them
        if author_id in followed and (not candidates or candidates[-1] != tweet_id):
            candidates.append(tweet_id)
    horizon = None if done or not chunk else chunk[-1][0]
    reached = bool(candidates) and candidates[-1] <= above
    if reached:
        candidates = [t for t in candidates if t > above]
    out: list[Tweet] = []
    consumed = 0
    for tweet_id in candidates:
        consumed += 1
        parts = body_parts(body_of.get(tweet_id))  # straight into the page's Tweet, no CachedTweet
        if parts is None:
            return None  # not cached (or not a value of ours): the general path reads Cassandra
        author_id, deleted_at, tail = parts
        if deleted_at is not None:
            continue
        out.append(Tweet(tweet_id, author_id, None, None, tail))
        if len(out) == limit:
            break
    region_done = consumed == len(candidates) and (horizon is None or reached)
    if len(out) == limit:
        at_end = region_done and (reached or floor == 0)
    elif region_done and (reached or floor == 0):
        at_end = True  # floor 0: nothing below the materialized region either
    else:
        return None  # more to read: below the floor, or past the window
    stats = stats if stats is not None else ReadStats(redis_round_trips=1)  # the round trip's own
    stats.timeline_cache = stats.following_cache = "hit"
    stats.tweet_cache_hits += consumed
    return Page(out, None if at_end else out[-1].tweet_id, "cache", set(), stats)


class UserViews:
    """Opens users' views over the stores, and answers what they follow."""

    def __init__(
        self, cassandra: CassandraStore, timelines: RedisTimelines, following: RedisFollowing,
        tweets: RedisTweets, *, prefix: str, windows: RedisTimelines | None = None,
        pipelined: PipelinedRedis | None = None,
    ) -> None:
        self.cassandra = cassandra
        self.tweets = tweets
        self.timelines = timelines
        self.redis = timelines.redis
        self.following_cache = following
        self.celebrity_cache = RedisCelebrities(self.redis, prefix=prefix)
        self.windows = windows  # the celebrities' windows, read in the first round trip (one Redis)
        self._open_script = self.redis.register_script(_OPEN)
        # The first round trip over a pipelined connection of its own (sinks/redis_pipelined.py),
        # when the service made one: the same call for ~0.2 ms less CPU per read.
        self.pipelined = pipelined
        self.cluster_scripts = ClusterScripts(self.redis) if is_cluster(self.redis) else None

    async def open_store(self, user_id: int, cursor: int, need: int, stats: ReadStats) -> View:
        """The user's view from Cassandra alone (Redis failed): following list, celebrities,
        meta and the newest rows, concurrently; nothing is cached."""
        following, celebrities, meta, rows = await asyncio.gather(
            self.cassandra.execute_all("get_following", (user_id,)),
            self.cassandra.execute_all("list_celebrities", (0,)),
            store_query(self.cassandra, stats, "get_meta", (user_id,)),
            store_query(self.cassandra, stats, "user_tl_below", (user_id, MAX_ID, 0, self.timelines.cap)),
        )
        stats.cassandra_queries += 2
        followees = frozenset(r.followee_id for r in following)
        view = View(len(followees), sorted(followees.intersection(r.author_id for r in celebrities)),
                    (meta[0].floor or 0) if meta else 0, bool(meta[0].stale) if meta else False,
                    cached=False, whole=False, followees=followees)
        if not view.stale:
            entries = [(r.tweet_id, r.author_id) for r in rows if r.tweet_id > view.floor]
            below = [e for e in entries if e[0] < cursor]
            view.first = usable_chunk(cursor, below, len(entries) < self.timelines.cap, need, "store")
        return view

    async def round_trip(self, user_id: int, cursor: int, need: int, stats: ReadStats,
                         gate: tuple[RedisTokenBucket, str] | None = None) -> list[Any]:
        """The first round trip of a read (``_OPEN``'s answer): the timeline window, the
        following facts and the window's bodies, after a token from ``gate`` (a bucket and a
        subject: RateLimited when refused)."""
        n = need + SLACK
        following = self.following_cache
        celebrity_cache = self.celebrity_cache
        keys = [self.timelines.key(user_id), self.timelines.version_key(user_id),
                following.key(user_id), following.version_key(user_id),
                celebrity_cache.key(), celebrity_cache.version_key()]
        args = [lex_below(cursor), n + 1, version_token(), self.timelines.ttl_s, self.tweets.key_prefix]
        if self.cluster_scripts is not None:
            answer = await open_cluster(self, user_id, keys, args, gate, stats)
        else:
            args += [*(self.windows.key_prefixes() if self.windows is not None else ("", "")), PULL_MIN]
            if gate is not None:
                bucket, subject = gate
                keys.append(bucket.key(subject))
                args += ["1", *bucket.args()]
            if self.pipelined is not None:
                answer = await self.pipelined.evalsha(self._open_script, keys, args)
            else:
                answer = await self._open_script(keys=keys, args=args)
            stats.redis_round_trips += 1
            if answer[0] == b"limited":
                raise RateLimited(RedisTokenBucket.result(answer[1]))
        return answer

    async def open(self, user_id: int, cursor: int, need: int, stats: ReadStats,
                   gate: tuple[RedisTokenBucket, str] | None = None, *, answer: list[Any] | None = None) -> View:
        """The user's view: the first round trip (:meth:`round_trip`, or its ``answer`` when
        the caller made it already), Cassandra for misses."""
        if answer is None:
            answer = await self.round_trip(user_id, cursor, need, stats, gate)
        (window, lowest, card, home_version, followee_card, flags, celebs, following_version,
         celebs_loaded, celebs_version, bodies, pulls) = answer

        view = View(max(0, followee_card - 1), [], 0, False, cached=False, whole=False)
        entries = [parse_member(m) for m in window]  # parsed once: the chunk, the bodies, the follows
        if lowest:
            sentinel_tid, sentinel_floor = parse_member(lowest[0])
            view.cached = sentinel_tid == SENTINEL_ID  # else foreign data under our key: a miss
        stats.timeline_cache = "hit" if view.cached else "miss"
        if view.cached:
            view.floor = sentinel_floor
            view.whole = card - 1 < self.timelines.cap
            view.first = usable_chunk(cursor, window_entries(entries, view.floor), view.whole, need, "cache")
            if view.first is None:
                view.cache_short_at = cursor

        following_hit = followee_card > 0
        stats.following_cache = "hit" if following_hit else "miss"
        for (tweet_id, _), body in zip(entries, bodies):
            if body != b"":  # b"": not read; None: not cached (a miss, known)
                view.bodies[tweet_id] = parse_body(tweet_id, body)
        if following_hit:
            for (_, author_id), flag in zip(entries, flags):
                view.follows[author_id] = bool(flag)
            view.celebrities = sorted(int(c) for c in celebs if int(c) != 0)
        if pulls:
            per, authors, windows, pulled_ids, pulled_bodies = pulls
            view.pulls_at = (cursor, per)
            view.windows = {int(a): (parse_window(page, low, size, per), decode_version(version))
                            for a, (page, low, size, version) in zip(authors, windows)}
            for raw_id, body in zip(pulled_ids, pulled_bodies):
                view.bodies[int(raw_id)] = parse_body(int(raw_id), body)

        reads: dict[str, Any] = {}
        if not celebs_loaded:
            # The celebrity set was lost (restart, flush, eviction): Cassandra has it.
            stats.cassandra_queries += 1
            reads["celebrities"] = self.cassandra.execute_all("list_celebrities", (0,))
        if not following_hit:
            reads["following"] = store_query(self.cassandra, stats, "get_following", (user_id,))
        if not view.cached:
            reads["meta"] = store_query(self.cassandra, stats, "get_meta", (user_id,))
            # The newest rows whatever the floor (rows at or below it may linger).
            reads["rows"] = store_query(self.cassandra, stats, "user_tl_below",
                                        (user_id, MAX_ID, 0, self.timelines.cap))
        if not reads:
            return view
        results = dict(zip(reads, await asyncio.gather(*reads.values())))
        every_celebrity: list[int] | None = None
        if not celebs_loaded:
            every_celebrity = sorted(r.author_id for r in results["celebrities"])

        if not view.cached:
            meta = results["meta"]
            view.floor = (meta[0].floor or 0) if meta else 0
            view.stale = bool(meta[0].stale) if meta else False
            rows = [(r.tweet_id, r.author_id) for r in results["rows"] if r.tweet_id > view.floor]
            if not view.stale:
                complete = len(rows) < self.timelines.cap
                below = [e for e in rows if e[0] < cursor]
                view.first = usable_chunk(cursor, below, complete, need, "store")
                view.fill = partial(self.timelines.fill, user_id, decode_version(home_version), rows, view.floor)
        fill_following = None
        if not following_hit:
            followees = sorted(r.followee_id for r in results["following"])
            view.followees = frozenset(followees)
            view.followee_count = len(followees)
            fill_following = self._fill_following(user_id, decode_version(following_version), followees)
        # The first chunk came from Cassandra: check its authors alongside the fills.
        checked: list[int] = []
        if following_hit and view.first is not None:
            checked = sorted({a for _, a in view.first[1]})
        check = self.following_cache.check(user_id, checked) if checked else None
        # ... and, on a timeline miss, read the chunk's bodies with them: the read's hydration
        # finds them here (a cached window's bodies came with the first round trip).
        first_ids = [t for t, _ in view.first[1]] if view.first is not None and not view.cached else []
        bodies = self.tweets.read(first_ids) if first_ids else None
        fill_celebrities = check_celebrities = None
        if every_celebrity is not None:
            fill_celebrities = self.celebrity_cache.fill(decode_version(celebs_version), every_celebrity)
            if following_hit and every_celebrity:
                check_celebrities = self.following_cache.check(user_id, every_celebrity)
        calls = {"following": fill_following, "check": check, "bodies": bodies,
                 "celebrities": fill_celebrities, "followed_celebrities": check_celebrities}
        calls = {k: c for k, c in calls.items() if c is not None}
        # The timeline fill (``view.fill``), the longest call of a miss, waits for the page:
        # nothing of the view needs it.
        if calls:
            done = dict(zip(calls, await asyncio.gather(*calls.values())))
            stats.redis_round_trips += 1  # concurrent: one round trip of latency
            if "bodies" in done:
                view.bodies.update(done["bodies"])
            if "following" in done:
                if done["following"] is None and every_celebrity is None:
                    # The celebrity set went missing after the first round trip: Cassandra.
                    every_celebrity = sorted(r.author_id for r in
                                             await self.cassandra.execute_all("list_celebrities", (0,)))
                    stats.cassandra_queries += 1
                view.celebrities = done["following"] or []
            found = done.get("check")
            if found is not None:  # None: the list was dropped meanwhile; followed() reloads it
                view.follows.update((a, a in found) for a in checked)
        if every_celebrity is not None:
            # The set was not loaded: what the script and the fill said about it is void.
            if view.followees is not None:
                view.celebrities = sorted(view.followees.intersection(every_celebrity))
            elif every_celebrity:
                followed = done.get("followed_celebrities")
                if followed is None:  # the cached list was dropped meanwhile
                    followed = await self.followees(user_id, view, stats)
                view.celebrities = sorted(followed.intersection(every_celebrity))
            else:
                view.celebrities = []
        return view

    async def followed(self, user_id: int, view: View, authors: set[int], stats: ReadStats) -> set[int]:
        """The authors among ``authors`` that the user follows now."""
        if view.followees is not None:
            return authors & view.followees
        unknown = [a for a in authors if a not in view.follows]
        if unknown:
            found = await self.following_cache.check(user_id, unknown)
            stats.redis_round_trips += 1
            if found is None:  # the cached list was dropped meanwhile (a follow change)
                return authors & await self.followees(user_id, view, stats)
            view.follows.update((a, a in found) for a in unknown)
        return {a for a in authors if view.follows[a]}

    async def followees(self, user_id: int, view: View, stats: ReadStats) -> frozenset[int]:
        """Every followee (for a pull-merge): the cached list, else Cassandra (no fill here)."""
        if view.followees is None:
            cached = await self.following_cache.members(user_id)
            stats.redis_round_trips += 1
            if cached is None:
                cached = {r.followee_id for r in await store_query(self.cassandra, stats, "get_following", (user_id,))}
            view.followees = frozenset(cached)
        return view.followees

    async def _fill_following(self, user_id: int, seen_version: str, followees: list[int]) -> list[int] | None:
        """Cache the list (version-checked) and return the celebrities in it: one round trip.
        None when the celebrity set is not loaded (it may have been evicted since the read began)."""
        if self.cluster_scripts is not None:  # two slots: the user's, the celebrity set's
            _, celebrity_flags = await asyncio.gather(self.following_cache.fill(user_id, seen_version, followees),
                                                      self._celebrity_flags(followees))
            results = [None, *celebrity_flags]
        else:
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

    async def _celebrity_flags(self, authors: list[int]) -> list[Any]:
        """[set loaded?, per author whether a celebrity] in one MULTI on the set's slot."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sismember(self.celebrity_cache.key(), "0")
            if authors:
                pipe.smismember(self.celebrity_cache.key(), authors)
            return await pipe.execute()
