"""``query.view.plain_hit`` against the reader's general path, on the same first-round-trip answer.

The answer is built as ``query/view.py``'s script builds it, from a randomized cached
timeline (entries at and below the floor, a whole or a capped copy), following list,
celebrity set and tweet bodies (live, delete marks, not cached, and values the cache
does not write). The general path runs on stubs: a tweet body not cached is
read from a Cassandra stub that holds every tweet; any other store call raises
``NeedsIO``. Wherever ``plain_hit`` answers, its page must be the general path's.
"""
from __future__ import annotations

import asyncio
from collections import namedtuple
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from query.page import ReadStats
from query.reader import HomeTimelineReader
from query.view import plain_hit
from schemas.events import INT64_MAX as MAX_ID
from sinks.redis_following import RedisFollowing
from sinks.redis_timeline import RedisTimelines, member
from sinks.redis_tweets import RedisTweets, body_value
from policies.timeline import SLACK

Row = namedtuple("Row", "tweet_id author_id text created_at deleted_at")


class NeedsIO(Exception):
    """The general path wanted a store call the answer does not cover."""


class _Unreachable:
    def __getattr__(self, name):
        raise NeedsIO(name)


class StubRedis(_Unreachable):
    def register_script(self, text):
        async def call(*args, **kwargs):
            raise NeedsIO("script")
        return call


class StubCassandra(_Unreachable):
    def __init__(self, tweets: dict[int, Row]) -> None:
        self.tweets = tweets

    async def execute(self, name, params):
        if name != "get_tweets":
            raise NeedsIO(name)
        return [self.tweets[t] for t in params[0] if t in self.tweets]


class StubTweets(RedisTweets):
    async def read(self, ids):
        return dict.fromkeys(ids)  # not cached: Cassandra has them

    async def write(self, posted, deleted):
        pass


BODY = st.sampled_from(["live"] * 12 + ["mark", "missing", "foreign", "foreign_mark"])


@st.composite
def worlds(draw):
    n = draw(st.integers(0, 30))
    ids = sorted(draw(st.lists(st.integers(2, 10**6), min_size=n, max_size=n, unique=True)), reverse=True)
    authors = [draw(st.integers(1, 6)) for _ in ids]
    floor = draw(st.sampled_from([0, 0, *(ids[i] for i in range(len(ids)) if i % 4 == 3)]))
    followed = draw(st.sampled_from([{1, 2, 3, 4, 5, 6}] * 3 + [set()])) | set(draw(st.lists(st.integers(1, 6), max_size=4)))
    bodies = [draw(BODY) for _ in ids]
    cap = draw(st.sampled_from([len(ids), len(ids) + 1, len(ids) + 10]))
    limit = draw(st.integers(1, 8))
    cursor = draw(st.sampled_from([MAX_ID, MAX_ID, *(t for t in ids[:10])]))
    above = draw(st.sampled_from([0, 0, *(t for t in ids[::3])]))
    celebs = draw(st.sampled_from([[b"0"]] * 6 + [[b"0", b"7"], []]))
    loaded = draw(st.sampled_from([1] * 6 + [0]))
    return ids, authors, floor, followed, bodies, cap, limit, cursor, above, celebs, loaded


def answer_of(ids, authors, floor, followed, bodies, cap, limit, cursor, celebs, loaded):
    """What the first round trip answers for this state (``query/view.py``'s ``_OPEN``)."""
    entries = [(t, a) for t, a in zip(ids, authors)]  # newest first; the sentinel is lowest
    members = [member(t, a).encode() for t, a in entries] + [member(0, floor).encode()]
    below = [m for m in members if cursor >= MAX_ID or int(m[:19]) < cursor]
    window = below[: limit + SLACK + 1]
    follows = {str(a).encode() for a in followed} | {b"0"}
    flags = [int(m.split(b":")[1] in follows) for m in window]
    raw_bodies = []
    for m, flag in zip(window, flags):
        tweet_id, author = (int(x) for x in m.split(b":"))
        if tweet_id == 0 or not flag:
            raw_bodies.append(b"")  # not read
            continue
        kind = bodies[ids.index(tweet_id)]
        raw_bodies.append({  # sinks.redis_tweets' values
            "live": body_value(author, f"tweet {tweet_id}", tweet_id // 7),
            "mark": b"d99",
            "missing": None,
            "foreign": b"not a body",
            "foreign_mark": b"dx",
        }[kind])
    return [window, [members[-1]], len(members), b"v", len(follows), flags, celebs, b"v", loaded, b"v", raw_bodies,
            []]  # no pulls read (the celebrities' windows)


def general_page(answer, ids, authors, bodies, cap, limit, cursor, above):
    redis = StubRedis()
    settings_ = SimpleNamespace(redis_prefix="t:", timeline_ttl_s=3600, author_window_cap=100)
    timelines = RedisTimelines(redis, prefix="t:", cap=cap, ttl_s=3600)
    store = {t: Row(t, a, f"tweet {t}", t // 7, 99 if kind == "mark" else None)
             for t, a, kind in zip(ids, authors, bodies)}
    reader = HomeTimelineReader(settings_, StubCassandra(store), timelines,
                                tweets=StubTweets(redis, prefix="t:"),
                                following=RedisFollowing(redis, prefix="t:"))

    async def run():
        stats = ReadStats()
        view = await reader.views.open(42, cursor, limit, stats, answer=answer)
        return await reader._read(42, view, cursor, limit, above, stats, True)

    return asyncio.run(run())


def shown(page):
    return [(t.tweet_id, t.author_id, t.text, t.created_at) for t in page.tweets], page.next_below, page.source


@settings(max_examples=800, deadline=None)
@given(worlds())
def test_plain_hit_equals_the_general_path(world):
    ids, authors, floor, followed, bodies, cap, limit, cursor, above, celebs, loaded = world
    answer = answer_of(ids, authors, floor, followed, bodies, cap, limit, cursor, celebs, loaded)
    fast = plain_hit(answer, cursor, limit, above, cap)
    try:
        general = general_page(answer, ids, authors, bodies, cap, limit, cursor, above)
    except NeedsIO:
        assert fast is None  # it needed more than the answer: plain_hit must not have answered
        return
    if fast is not None:
        assert shown(fast) == shown(general)
        assert [t.rendered for t in fast.tweets] == [t.rendered for t in general.tweets]


def test_a_plain_cache_hit_is_answered_from_the_first_round_trip():
    ids = list(range(100, 40, -1))
    authors = [1 + i % 3 for i in range(len(ids))]
    bodies = ["live"] * len(ids)
    answer = answer_of(ids, authors, 0, {1, 2, 3}, bodies, 800, 10, MAX_ID, [b"0"], 1)
    fast = plain_hit(answer, MAX_ID, 10, 0, 800)
    assert fast is not None and [t.tweet_id for t in fast.tweets] == ids[:10]
    assert fast.next_below == ids[9] and fast.source == "cache" and fast.stats.redis_round_trips == 1
    assert shown(fast) == shown(general_page(answer, ids, authors, bodies, 800, 10, MAX_ID, 0))
    # Not plain: a celebrity followed (pulled at read time), a body not cached, no sentinel.
    assert plain_hit(answer_of(ids, authors, 0, {1, 2, 3}, bodies, 800, 10, MAX_ID, [b"0", b"7"], 1),
                     MAX_ID, 10, 0, 800) is None
    assert plain_hit(answer_of(ids, authors, 0, {1, 2, 3}, ["missing"] + bodies[1:], 800, 10, MAX_ID, [b"0"], 1),
                     MAX_ID, 10, 0, 800) is None
    assert plain_hit([answer[0], [], *answer[2:]], MAX_ID, 10, 0, 800) is None
