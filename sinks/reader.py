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
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Sequence

from policies.timeline import merge_desc
from settings import Settings
from sinks.cassandra import CassandraStore
from sinks.redis_timeline import RedisTimelines

MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Tweet:
    tweet_id: int
    author_id: int
    text: str
    created_at: int


@dataclass
class Page:
    tweets: list[Tweet]
    next_below: int | None  # pass as ``below`` for the next page; None at the real end
    source: str  # "cache", "store" or "rebuilt"
    pulled: set[int] = field(default_factory=set)  # tweet ids that came from pulls


class HomeTimelineReader:
    def __init__(self, settings: Settings, cassandra: CassandraStore, timelines: RedisTimelines) -> None:
        self.settings = settings
        self.cassandra = cassandra
        self.timelines = timelines
        self.redis = timelines.redis

    async def following(self, user_id: int) -> list[int]:
        rows = await self.cassandra.execute("get_following", (user_id,))
        return [r.followee_id for r in rows]

    async def celebrities(self, followees: Sequence[int]) -> set[int]:
        if not followees:
            return set()
        flags = await self.redis.smismember(f"{self.settings.redis_prefix}celebrities", list(followees))
        return {a for a, f in zip(followees, flags) if f}

    async def meta(self, user_id: int) -> tuple[int, bool]:
        rows = await self.cassandra.execute("get_meta", (user_id,))
        if not rows:
            return 0, False
        return rows[0].floor or 0, bool(rows[0].stale)

    async def author_ids(self, authors: Sequence[int], below: int, above: int, limit: int) -> list[list[int]]:
        params = [(a, below, limit) for a in authors]
        results = await self.cassandra.query_many("author_tl_below", params)
        return [[r.tweet_id for r in rows if r.tweet_id > above] for rows in results]

    async def materialized(self, user_id: int, below: int, floor: int, limit: int) -> tuple[list[tuple[int, int]], bool, str]:
        """Materialized entries in (floor, below), newest first; whether that region is exhausted."""
        cached = await self.timelines.read(user_id, below=None if below >= MAX_ID else below, limit=limit)
        if cached is not None and cached.floor == floor:
            entries = [e for e in cached.entries if e[0] > floor]
            whole = cached.size < self.timelines.cap  # the cache holds the entire timeline
            if len(entries) >= limit or whole:
                return entries, len(entries) < limit, "cache"
        rows = await self.cassandra.execute("user_tl_below", (user_id, below, floor, limit))
        entries = [(r.tweet_id, r.author_id) for r in rows]
        if cached is None:
            await self.refill(user_id, floor)
        return entries, len(entries) < limit, "store"

    async def refill(self, user_id: int, floor: int) -> None:
        version = await self.timelines.version(user_id)
        rows = await self.cassandra.execute("user_tl_below", (user_id, MAX_ID, floor, self.timelines.cap))
        await self.timelines.fill(user_id, version, [(r.tweet_id, r.author_id) for r in rows], floor)

    async def hydrate(self, ids: Sequence[int]) -> dict[int, Tweet]:
        results = await self.cassandra.query_many("get_tweet", [(t,) for t in ids])
        out: dict[int, Tweet] = {}
        for rows in results:
            if rows and not rows[0].deleted_at:
                r = rows[0]
                out[r.tweet_id] = Tweet(r.tweet_id, r.author_id, r.text, r.created_at)
        return out

    async def page(self, user_id: int, *, limit: int, below: int | None = None) -> Page:
        cursor = MAX_ID if below is None else below
        (floor, stale), followees = await asyncio.gather(self.meta(user_id), self.following(user_id))
        following = set(followees)
        celebs = sorted(await self.celebrities(followees))
        phase = "pull" if stale else "materialized"
        source = "rebuilt" if stale else ""
        out: list[Tweet] = []
        pulled: set[int] = set()
        chunk = max(limit, 20)
        while len(out) < limit and following:
            if phase == "materialized":
                if cursor <= floor + 1:
                    phase = "pull"
                    continue
                mat, mat_done, src = await self.materialized(user_id, cursor, floor, chunk)
                source = source or src
                pulls = await self.author_ids(celebs, cursor, floor, chunk)
                # A truncated source vouches only for ids down to its last one.
                cut = [p[-1] for p in pulls if len(p) == chunk]
                if not mat_done and mat:
                    cut.append(mat[-1][0])
                horizon = max(cut, default=0)
                candidates = [
                    t for t in merge_desc([t for t, a in mat if a in following], *pulls, limit=None)
                    if t >= horizon
                ]
                done = mat_done and all(len(p) < chunk for p in pulls)
                pulled.update(t for p in pulls for t in p)
            else:
                source = source or "store"
                lists = await self.author_ids(followees, cursor, 0, chunk)
                horizon = max((p[-1] for p in lists if len(p) == chunk), default=0)
                candidates = [t for t in merge_desc(*lists, limit=None) if t >= horizon]
                done = all(len(p) < chunk for p in lists)
                pulled.update(candidates)
                if not candidates:
                    break  # the real end
            bodies = await self.hydrate(candidates)
            for tweet_id in candidates:
                cursor = tweet_id
                tweet = bodies.get(tweet_id)
                if tweet is not None:
                    out.append(tweet)
                    if len(out) == limit:
                        break
            if len(out) < limit and done and phase == "materialized":
                # Nothing left above the floor: continue below it by pull-merge.
                phase, cursor = "pull", min(cursor, floor + 1)
        next_below = cursor if len(out) == limit else None
        return Page(out, next_below, source or "store", pulled & {t.tweet_id for t in out})

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
