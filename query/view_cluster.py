"""The first round trip of a read (``query/view.py``) on a Redis Cluster, and the Lua both share.

On one server the first round trip is one script (``view._OPEN``): the rate-limit token,
the timeline window, the following facts, the followed celebrities (``SINTER`` with the
celebrity set) and the window's tweet bodies. On a cluster a script may only touch keys of
one slot, so the same answer takes two round trips:

1. concurrently: the user's script (timeline window, following flags, versions: one slot, the
   hash tag ``{user}``), the celebrity set's script (loaded? its members, or its version), and
   the reader's rate-limit token (its own slot);
2. concurrently: the window's bodies (one pipeline, one call per node) and which celebrities
   the user follows (``SMISMEMBER`` on the cached list, checked to exist in the same call).

:func:`open_cluster` returns the answer in the shape of ``_OPEN``'s, so the rest of
``UserViews.open`` is the same code on both topologies. Reading the whole celebrity set costs
one member per celebrity per read (``SINTER`` on one server did it in place).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from api.ratelimit import RateLimited, RedisTokenBucket
from query.page import ReadStats
from sinks.redis_client import register_script

if TYPE_CHECKING:
    from query.view import UserViews

# ``version(key, token, ttl)``: the key's value, created with the reader's token when it does
# not exist ("absent" cannot be a version: see query/view.py).
VERSION_LUA = """
local function version(key, token, ttl)
  local v = redis.call('GET', key)
  if v then return v end
  redis.call('SET', key, token, 'EX', ttl)
  return token
end
"""

# The window of KEYS[1] (ARGV[1]: upper bound, ARGV[2]: size), its lowest member and size, the
# following set KEYS[3]'s size, and per window member whether its author is followed.
WINDOW_LUA = """
local window = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], '-', 'LIMIT', 0, tonumber(ARGV[2]))
local lowest = redis.call('ZRANGE', KEYS[1], 0, 0)
local size = redis.call('ZCARD', KEYS[1])
local following = redis.call('SCARD', KEYS[3])
local flags = {}
if following > 0 and #window > 0 then
  local authors = {}
  for i, m in ipairs(window) do authors[i] = string.match(m, ':(%d+)$') or '' end
  flags = redis.call('SMISMEMBER', KEYS[3], unpack(authors))  -- one call, not one per member
end
"""

# KEYS: timeline, timeline version, following set, following version (one slot: {user}).
# ARGV: upper bound of the window, window size, a fresh version token, version ttl.
_USER = VERSION_LUA + WINDOW_LUA + """
return {window, lowest, size, version(KEYS[2], ARGV[3], ARGV[4]), following, flags,
        version(KEYS[4], ARGV[3], ARGV[4])}
"""

# KEYS: celebrity set, its version (one slot). ARGV: a fresh version token, version ttl.
# Returns {1, members, ''} when the set is loaded (holds '0'), else {0, {}, version}.
_CELEBRITIES = VERSION_LUA + """
if redis.call('SISMEMBER', KEYS[1], '0') == 1 then return {1, redis.call('SMEMBERS', KEYS[1]), ''} end
return {0, {}, version(KEYS[2], ARGV[1], ARGV[2])}
"""


class ClusterScripts:
    def __init__(self, redis: Any) -> None:
        self.user = register_script(redis, _USER)
        self.celebrities = register_script(redis, _CELEBRITIES)


def body_ids(window: list[bytes], following: int, flags: list[int]) -> list[tuple[int, int]]:
    """(position in the window, tweet id) of the bodies ``_OPEN`` reads: not the sentinel, and
    only followed authors' when the following list is cached."""
    out = []
    for i, m in enumerate(window):
        tweet_id = int(m.split(b":", 1)[0])
        if tweet_id and (following == 0 or (i < len(flags) and flags[i] == 1)):
            out.append((i, tweet_id))
    return out


async def open_cluster(views: "UserViews", user_id: int, keys: list[str], args: list[Any],
                       gate: tuple[RedisTokenBucket, str] | None, stats: ReadStats) -> list[Any]:
    """``_OPEN``'s answer from two round trips (module doc); RateLimited when the bucket refused."""
    scripts = views.cluster_scripts
    calls = [scripts.user(keys=keys[:4], args=args[:4]),
             scripts.celebrities(keys=keys[4:6], args=args[2:4])]
    if gate is not None:
        bucket, subject = gate
        calls.append(bucket.take(subject))
    user, celebrities, *taken = await asyncio.gather(*calls)
    stats.redis_round_trips += 1
    if taken and not taken[0].allowed:
        raise RateLimited(taken[0])
    window, lowest, size, home_v, following, flags, following_v = user
    loaded, members, celebrities_v = celebrities
    every = sorted(int(m) for m in members if int(m) != 0)
    wanted = body_ids(window, following, flags)
    second: dict[str, Any] = {}
    if wanted:
        second["bodies"] = views.tweets.rows([t for _, t in wanted])
    if following > 0 and every:
        second["check"] = views.following_cache.check(user_id, every)
    done: dict[str, Any] = {}
    if second:
        done = dict(zip(second, await asyncio.gather(*second.values())))
        stats.redis_round_trips += 1
    followed: list[int] = []
    if following > 0 and every:
        found = done["check"]
        if found is None:  # the list was dropped after the first call: a following miss
            following, flags = 0, []
        else:
            followed = sorted(found)
    bodies: list[Any] = [b"" for _ in window]  # b"": not read, as _OPEN answers
    for (i, _), row in zip(wanted, done.get("bodies", [])):
        bodies[i] = row
    return [window, lowest, size, home_v, following, flags, followed, following_v, loaded, celebrities_v, bodies,
            []]  # no pulls: the reader reads the celebrities' windows itself
