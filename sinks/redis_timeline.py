"""The Redis layout of cached timelines (the only module that knows it).

A cached timeline is a sorted set whose members all have score 0 and read
``"<tweet_id:019d>:<author_id>"``: with equal scores Redis orders members
lexicographically, and zero-padded ids make that the numeric order of tweet ids
(scores are doubles and cannot hold 63-bit ids exactly). One sentinel member,
``"0000000000000000000:<floor>"``, is always present: it makes an empty cached
timeline distinguishable from a missing one and carries the timeline's floor
(the tweet id below which the materialized timeline is not complete).

Rules that keep the cache equal to Cassandra under at-least-once delivery:

* a key that exists holds the newest ``cap`` entries of the Cassandra timeline;
* a delivery only touches a key that exists (it never recreates a half-full one),
  and always bumps the per-user version (a fresh token, see ``version_token``);
* a reader that missed fills the key from Cassandra only if the version it saw
  before reading Cassandra is unchanged (no delivery raced with its read).

Adding an existing member, or removing a missing one, changes nothing, so every
write can be replayed.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from redis.asyncio import Redis

from policies.redis_cluster import tagged
from schemas.events import INT64_MAX
from sinks.redis_client import Acks, execute, is_cluster, register_script

if TYPE_CHECKING:
    from settings import Settings

SENTINEL_ID = 0
_PAD = 19

# ZADD with score 0, a few hundred members per call (one call per member cost a fill of 800
# members ~40% more of Redis's time; unpack is bounded by Lua's stack), of
# ``zadd_all(key, first, last)``: ARGV[first..last], or ``zadd_joined(key, joined)``: the members
# in one argument, separated by MEMBER_SEP (redis-py packing 800 arguments cost the query
# service ~1 ms of CPU per cache miss, joining them ~20 us).
MEMBER_SEP = ","
ZADD_LUA = """
local function zadd_list(key, list, first, last)
  local batch = {}
  for i = first, last do
    batch[#batch + 1] = 0
    batch[#batch + 1] = list[i]
    if #batch >= 512 then
      redis.call('ZADD', key, unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then redis.call('ZADD', key, unpack(batch)) end
end
local function zadd_all(key, first, last) zadd_list(key, ARGV, first, last) end
local function zadd_joined(key, joined)
  local list = {}
  for m in string.gmatch(joined, '[^%s]+') do list[#list + 1] = m end
  zadd_list(key, list, 1, #list)
end
""" % MEMBER_SEP

# KEYS: timeline and version of each user. ARGV: cap, version_ttl, new version token, then
# for each user the number of its members and the members to add. Several users per call
# where the keys may share a script (one Redis, not a cluster: see push_many).
_PUSH = ZADD_LUA + """
local cap = tonumber(ARGV[1])
local a = 4
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  redis.call('SET', KEYS[k + 1], ARGV[3], 'EX', ARGV[2])
  if redis.call('EXISTS', KEYS[k]) == 1 then
    zadd_all(KEYS[k], a + 1, a + n)
    local size = redis.call('ZCARD', KEYS[k])
    if size > cap + 1 then redis.call('ZREMRANGEBYRANK', KEYS[k], 1, size - cap - 1) end
  end
  a = a + n + 1
end
return 1
"""

# The same for users of one Redis (not a cluster), with keys derived from ids in the script and
# every user's members in one argument: ARGV: cap, version_ttl, new version token, timeline and
# version key prefixes (``key_prefixes``), then the users joined by ';', each "<id>,<member>,...".
# redis-py packing an argument per member and two keys per user took ~8% of the worker's main
# thread at a steady 50% load (a profile of the benchmark's point); joined, the client's CPU per
# entry fell from 7.4-8.2 to 2.7-2.8 us, Redis's stayed 6.4-6.5 (``bench/redis_push_cost.py``).
_PUSH_JOINED = ZADD_LUA + """
local cap = tonumber(ARGV[1])
for user in string.gmatch(ARGV[6], '[^;]+') do
  local list = {}
  for m in string.gmatch(user, '[^%s]+') do list[#list + 1] = m end
  local key = ARGV[4] .. list[1] .. '}'
  redis.call('SET', ARGV[5] .. list[1] .. '}', ARGV[3], 'EX', ARGV[2])
  if redis.call('EXISTS', key) == 1 then
    zadd_list(key, list, 2, #list)
    local size = redis.call('ZCARD', key)
    if size > cap + 1 then redis.call('ZREMRANGEBYRANK', key, 1, size - cap - 1) end
  end
end
return 1
""" % MEMBER_SEP

# KEYS: timeline, version. ARGV: version_ttl, cap, new version token, then members to remove.
# A full window (cap entries) that loses an entry no longer holds the newest
# cap entries of the timeline (the next older one is only in Cassandra), and a
# window below cap would pass for the whole timeline: drop the key instead.
_UNPUSH = """
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('ZCARD', KEYS[1]) - 1
local removed = 0
for i = 4, #ARGV do removed = removed + redis.call('ZREM', KEYS[1], ARGV[i]) end
if removed > 0 and n >= tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: timeline, version. ARGV: expected version, ttl, the members (sentinel first) joined by
# MEMBER_SEP. A missing version never matches (see query/view.py: a reader creates it before reading).
_FILL = ZADD_LUA + """
local v = redis.call('GET', KEYS[2])
if v == false or v ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
zadd_joined(KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# ``read_window(key, version_key, bound, n, token, ttl)``: the window of ``n`` members below the
# ZREVRANGEBYLEX ``bound``, the lowest member (the sentinel), the size, and the version (created
# with the reader's token when missing), as ``parse_window`` and ``decode_version`` take them.
# The version only when the key holds no sentinel (not cached): only such a window is filled, so
# a cached one skips the version's two commands and answers false (decode_version: '').
# Also read by the first call of a read for the celebrities' windows (query/view.py).
WINDOW_READ_LUA = """
local function read_window(key, version_key, bound, n, token, ttl)
  local lowest = redis.call('ZRANGE', key, 0, 0)
  local version = false
  if not (lowest[1] and string.match(lowest[1], '^0+:')) then
    redis.call('SET', version_key, token, 'NX', 'EX', ttl)
    version = redis.call('GET', version_key)
  end
  return {redis.call('ZREVRANGEBYLEX', key, bound, '-', 'LIMIT', 0, n), lowest, redis.call('ZCARD', key), version}
end
"""

# KEYS: timeline and version of each user. ARGV: upper ZREVRANGEBYLEX bound, members to read,
# a fresh version token, version ttl. Per user: ``read_window``. One call instead of five
# commands per user: what a read pays per command is redis-py's, not Redis's.
_READ_MANY = WINDOW_READ_LUA + """
local out = {}
for k = 1, #KEYS, 2 do
  out[#out + 1] = read_window(KEYS[k], KEYS[k + 1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
end
return out
"""


_counter = itertools.count()


def version_token() -> str:
    """A version value that no earlier bump of any process produced (time, process,
    sequence): unlike a counter, it cannot come back after the key was lost."""
    return f"{time.time_ns()}-{os.getpid()}-{next(_counter)}"


def timeline_key(prefix: str, user_id: int) -> str:
    """The cached home timeline of a user: ``<prefix>home:{<user>}`` (the user's hash tag)."""
    return tagged(prefix, "home", user_id)


def member(tweet_id: int, author_id: int) -> str:
    """``<tweet id, _PAD digits>:<author id>``: lexicographic order is the ids' order. ``zfill``
    pads as ``f"{id:019d}"`` does, in about half the time (a fill formats 800 of these)."""
    return str(tweet_id).zfill(_PAD) + ":" + str(author_id)


# Memoized: a member is an immutable fact, and reads parse the same ones again and again (a
# celebrity's window in every follower's read, a hybrid read ~180 members): a sixth of the time
# each. 32,768 entries: a few MB.
@functools.lru_cache(maxsize=32768)
def parse_member(raw: bytes | str) -> tuple[int, int]:
    """(tweet id, author id) of a member: the id is always ``_PAD`` digits (``member``), and
    ``int`` reads digits from bytes and str alike (no decode: a read parses ~50 per page)."""
    if raw[_PAD:_PAD + 1] not in (b":", ":"):
        raise ValueError(f"not a timeline member: {raw!r}")
    return int(raw[:_PAD]), int(raw[_PAD + 1:])


def lex_below(tweet_id: int) -> str:
    """The ZREVRANGEBYLEX bound for members with ids strictly below ``tweet_id`` ("+", every
    member, from INT64_MAX: a read without a cursor)."""
    return "+" if tweet_id >= INT64_MAX else f"({tweet_id:0{_PAD}d}"


def window_entries(window: Iterable[bytes | str | tuple[int, int]], floor: int) -> list[tuple[int, int]]:
    """Cached members (raw, or already parsed) above ``floor`` (drops the sentinel), in the given order."""
    return [e for e in (m if isinstance(m, tuple) else parse_member(m) for m in window) if e[0] > floor]


async def drop_and_bump(redis: Redis, keys: Iterable[tuple[str, str]], ttl_s: int,
                        acks: Acks | None = None) -> None:
    """Delete cached keys and bump their versions (which expire after ``ttl_s``), one
    pipeline for all: ``keys`` are (cached key, version key) pairs. A reader that saw the
    old version will not refill the key with what it read before.

    A bump sets a fresh token (``version_token``), never increments a counter: after a
    flush a counter would start again and could come back to a value a reader saw before
    the flush, and that reader would then install what it read before a write."""
    keys = list(keys)
    if not keys:
        return
    token = version_token()
    async with redis.pipeline(transaction=False) as pipe:
        for key, version_key in keys:
            pipe.delete(key)
            pipe.set(version_key, token, ex=ttl_s)
        await execute(redis, pipe, (key for key, _ in keys), acks)


@dataclass(frozen=True)
class CachedTimeline:
    entries: list[tuple[int, int]]  # (tweet_id, author_id), newest first
    floor: int
    size: int  # entries in the cached window (without the sentinel)


class RedisTimelines:
    """Home timelines in Redis: write-through pushes and version-checked fills."""

    push_users = 128  # users per push script call (one Redis); see push_many
    push_members = 4096  # about the arguments per call, so that one call stays short

    def __init__(self, redis: Redis, *, prefix: str, cap: int, ttl_s: int, acks: Acks | None = None,
                 kind: str = "home") -> None:
        self.redis = redis
        self.prefix = prefix
        self.kind = kind  # "home": users' home timelines; "atl": authors' own tweets (author_windows)
        self.cap = cap
        self.ttl_s = ttl_s
        self.acks = acks  # the worker's writes wait for replicas (sinks/redis_client.py)
        self._push = register_script(redis, _PUSH)
        # One Redis: users' members joined into one argument (``_PUSH_JOINED``); a cluster: a
        # call per user, its keys declared (each user's keys are in a slot of their own).
        self.joined = not is_cluster(redis)
        self._push_joined = None if is_cluster(redis) else redis.register_script(_PUSH_JOINED)
        self._unpush = register_script(redis, _UNPUSH)
        self._fill = register_script(redis, _FILL)
        self._read_many = None if is_cluster(redis) else redis.register_script(_READ_MANY)

    @classmethod
    def from_settings(cls, redis: Redis, settings: "Settings", acks: Acks | None = None) -> "RedisTimelines":
        """The cached timelines of ``settings``' namespace (prefix, ``TL_TIMELINE_CAP``, ``TL_TIMELINE_TTL_S``)."""
        return cls(redis, prefix=settings.redis_prefix, cap=settings.timeline_cap, ttl_s=settings.timeline_ttl_s,
                   acks=acks)

    @classmethod
    def author_windows(cls, redis: Redis, settings: "Settings", acks: Acks | None = None) -> "RedisTimelines":
        """The newest tweet ids of authors (``<prefix>atl:{<author>}``), the same rules as home
        timelines: stage 1 pushes each stored tweet to its author's window when it is cached and
        removes deleted ones; a reader that pulls an author (a celebrity) reads the window and
        fills a missing one from Cassandra's ``author_timeline``, version-checked
        (``TL_AUTHOR_WINDOW_CAP`` ids, ``TL_TIMELINE_TTL_S``). The floor is always 0."""
        return cls(redis, prefix=settings.redis_prefix, cap=settings.author_window_cap,
                   ttl_s=settings.timeline_ttl_s, acks=acks, kind="atl")

    # A user's keys carry the hash tag {user}: one slot for the timeline, its version and
    # the following list (policies/redis_cluster.py), so each script touches one slot.
    def key(self, user_id: int) -> str:
        return tagged(self.prefix, self.kind, user_id)

    def version_key(self, user_id: int) -> str:
        return tagged(self.prefix, f"{self.kind}v", user_id)

    def key_prefixes(self) -> tuple[str, str]:
        """What a key and a version key are before the id (each ends with ``}`` after it),
        for scripts that derive the keys of ids they read (one Redis only)."""
        return tagged(self.prefix, self.kind, "")[:-1], tagged(self.prefix, f"{self.kind}v", "")[:-1]

    async def push_many(self, adds: dict[int, Sequence[tuple[int, int]]]) -> None:
        """Add entries to the timelines that are cached; one pipeline for all users.

        On one Redis a script call serves up to ``push_users`` users (``push_members``
        members), their ids and members joined into one argument: a call per user cost the
        worker's main thread ~80 us of redis-py packing and parsing, an argument per member
        most of the rest, and with small batches under steady load users get about one entry
        per batch. On a cluster each user's keys are in a slot of their own: a call per user."""
        if not adds:
            return
        token = version_token()
        if self.joined:
            await self._push_many_joined(adds, token)
            return
        per_call = 1 if is_cluster(self.redis) else self.push_users
        async with self.redis.pipeline(transaction=False) as pipe:
            keys: list[str] = []
            args: list[Any] = [self.cap, self.ttl_s, token]
            for user_id, entries in adds.items():
                keys += (self.key(user_id), self.version_key(user_id))
                args.append(len(entries))
                args += [member(t, a) for t, a in entries]
                if len(keys) >= 2 * per_call or len(args) >= self.push_members:
                    await self._push(keys=keys, args=args, client=pipe)
                    keys, args = [], [self.cap, self.ttl_s, token]
            if keys:
                await self._push(keys=keys, args=args, client=pipe)
            await execute(self.redis, pipe, map(self.key, adds), self.acks)

    async def _push_many_joined(self, adds: dict[int, Sequence[tuple[int, int]]], token: str) -> None:
        head = [self.cap, self.ttl_s, token, *self.key_prefixes()]
        async with self.redis.pipeline(transaction=False) as pipe:
            users: list[str] = []
            members = 0
            for n, (user_id, entries) in enumerate(adds.items(), 1):
                users.append(MEMBER_SEP.join([str(user_id), *[member(t, a) for t, a in entries]]))
                members += len(entries) + 1
                if len(users) >= self.push_users or members >= self.push_members or n == len(adds):
                    await self._push_joined(args=[*head, ";".join(users)], client=pipe)
                    users, members = [], 0
            await execute(self.redis, pipe, map(self.key, adds), self.acks)

    async def unpush_many(self, removes: dict[int, Sequence[tuple[int, int]]]) -> None:
        if not removes:
            return
        token = version_token()
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, entries in removes.items():
                members = [member(t, a) for t, a in entries]
                await self._unpush(
                    keys=[self.key(user_id), self.version_key(user_id)],
                    args=[self.ttl_s, self.cap, token, *members],
                    client=pipe,
                )
            await execute(self.redis, pipe, map(self.key, removes), self.acks)

    async def invalidate(self, user_ids: Iterable[int]) -> None:
        """Drop cached timelines (after a rebuild or a floor change) and bump versions."""
        await drop_and_bump(self.redis, ((self.key(u), self.version_key(u)) for u in user_ids), self.ttl_s,
                            self.acks)

    async def version(self, user_id: int) -> str:
        return decode_version(await self.redis.get(self.version_key(user_id)))

    async def fill(self, user_id: int, seen_version: str, entries: Sequence[tuple[int, int]], floor: int) -> bool:
        """Cache the newest ``cap`` entries unless a delivery raced with the Cassandra read."""
        members = MEMBER_SEP.join([member(SENTINEL_ID, floor), *(member(t, a) for t, a in entries[: self.cap])])
        ok = await self._fill(
            keys=[self.key(user_id), self.version_key(user_id)],
            args=[seen_version, self.ttl_s, members],
        )
        return bool(ok)

    async def read(self, user_id: int, *, below: int | None, limit: int) -> CachedTimeline | None:
        """Entries with tweet_id < below, newest first; None when the timeline is not cached."""
        key = self.key(user_id)
        hi = "+" if below is None else lex_below(below)
        # MULTI/EXEC: the key cannot be evicted or replaced between the three commands.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrevrangebylex(key, hi, "-", start=0, num=limit + 1)
            pipe.zrange(key, 0, 0)
            pipe.zcard(key)
            page, lowest, size = await pipe.execute()
        return parse_window(page, lowest, size, limit)

    async def read_many(self, user_ids: Sequence[int], *, below: int | None,
                        limit: int) -> tuple[dict[int, CachedTimeline | None], dict[int, str]]:
        """``read`` of several timelines, and the version of each (created with a fresh token
        when missing: what a later ``fill`` of a missed one is checked against). On one Redis a
        single script call; on a cluster a MULTI/EXEC per timeline (each its own slot),
        concurrently."""
        hi = "+" if below is None else lex_below(below)
        token = version_token()
        if self._read_many is None:  # a cluster: each user's keys in their own slot
            answer = await asyncio.gather(*(self._read_multi(u, hi, limit, token) for u in user_ids))
        else:
            keys = [k for u in user_ids for k in (self.key(u), self.version_key(u))]
            answer = await self._read_many(keys=keys, args=[hi, limit + 1, token, self.ttl_s])
        return ({u: parse_window(page, lowest, size, limit) for u, (page, lowest, size, _) in zip(user_ids, answer)},
                {u: decode_version(version) for u, (_, _, _, version) in zip(user_ids, answer)})

    async def _read_multi(self, user_id: int, hi: str, limit: int, token: str) -> list[Any]:
        """``read_window`` of one timeline as a MULTI/EXEC (its keys' slot): the same four replies."""
        key, version_key = self.key(user_id), self.version_key(user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(version_key, token, nx=True, ex=self.ttl_s)
            pipe.zrevrangebylex(key, hi, "-", start=0, num=limit + 1)
            pipe.zrange(key, 0, 0)
            pipe.zcard(key)
            pipe.get(version_key)
            return (await pipe.execute())[1:]


def decode_version(version: bytes | str | None) -> str:
    """A version key's value as read (bytes, or None when missing) as the str ``fill`` takes."""
    return version.decode() if isinstance(version, bytes) else (version or "")


def parse_window(page: list[bytes], lowest: list[bytes], size: int, limit: int) -> CachedTimeline | None:
    """A cached timeline from a read's replies (ZREVRANGEBYLEX of ``limit + 1`` members, the
    lowest member, ZCARD): None when the key holds no sentinel (not cached)."""
    if not lowest:
        return None
    sentinel_tid, floor = parse_member(lowest[0])
    if sentinel_tid != SENTINEL_ID:  # foreign data under our key; treat as a miss
        return None
    entries = [parse_member(m) for m in page]
    entries = [e for e in entries if e[0] != SENTINEL_ID][:limit]
    return CachedTimeline(entries=entries, floor=floor, size=size - 1)
