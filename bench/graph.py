"""A seeded synthetic social graph for the benchmarks (``bench/run.py``).

Shape (everything derived from one ``random.Random(seed)``):

* follower counts follow a truncated discrete power law
  (``P(f >= x) ~ (x / min_followers) ** -(exponent - 1)``): most users have tens of
  followers, a few hundred or thousands; no ordinary user reaches the celebrity
  threshold;
* ``celebrities`` users get between 1.05x and 1.15x the threshold in followers,
  drawn from the users outside a ``pure_share`` group that follows no celebrity
  (so the read phase has readers with 0 and with 10 celebrity pulls);
* followers of a user are a uniform sample of the other users;
* ``inactive_share`` of the users are inactive: their last activity is 60 days
  before the run, the others' one day before; the pipeline skips deliveries to
  inactive users (the design's section 11) and rebuilds them when they return;
* tweets are posted by active users only, with probability proportional to
  ``followers ** beta`` (people with an audience post more), and celebrities get
  ``celebrity_tweet_share`` of all tweets; ``beta`` is solved so that the expected
  number of deliveries (timeline rows written: active followers of a pushed
  author) per tweet is ``deliveries_per_tweet`` - or the largest mean the graph
  allows, which ``Graph.describe`` reports.

Because the graph is known, the exact number of rows the pipeline must write for
any list of tweets is known too (``Graph.deliveries_of``): the benchmark checks the
stores against it.
"""
from __future__ import annotations

import bisect
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from policies.snowflake import SnowflakeGenerator

DAY_MS = 24 * 3600 * 1000
USER_BASE = 7 * 10**12


@dataclass(frozen=True)
class GraphSpec:
    users: int
    celebrities: int
    celebrity_threshold: int
    # Users with power-law follower counts (None: everyone); the others are read-only
    # accounts that follow people but have no followers and never post.
    posters: int | None = None
    # A few pushed authors with these exact follower counts (the "large" lag class).
    large_authors: tuple[int, ...] = ()
    min_followers: int = 10
    exponent: float = 2.5  # of the follower-count density
    inactive_share: float = 0.6
    deliveries_per_tweet: float = 75.0
    celebrity_tweet_share: float = 0.02
    pure_share: float = 0.1  # users who follow no celebrity
    hybrid_readers: int = 100  # users who follow every celebrity
    # Readers who follow as many accounts as real users do (``heavy_following`` posters each),
    # half of them following no celebrity, half every celebrity: the read comparisons use them.
    heavy_readers: int = 0
    heavy_following: int = 0
    # An ordinary user's follower count stays below this (threshold minus hysteresis).
    max_ordinary_followers: int | None = None

    def cap(self) -> int:
        cap = self.max_ordinary_followers or self.celebrity_threshold - 1
        return max(self.min_followers, min(cap, self.users - 1))


@dataclass
class Graph:
    spec: GraphSpec
    seed: int
    ids: list[int]
    followers: list[list[int]]  # index -> follower indices (sorted)
    active: list[bool]
    celebrity: list[bool]
    pure: list[bool]  # follows no celebrity
    heavy_pure: list[int] = field(default_factory=list)  # heavy readers following no celebrity
    heavy_hybrid: list[int] = field(default_factory=list)  # heavy readers following every celebrity
    beta: float = 0.0
    _cum: list[float] = field(default_factory=list, repr=False)
    _authors: list[int] = field(default_factory=list, repr=False)
    _active_followers: list[int] = field(default_factory=list, repr=False)

    # --- facts ------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.ids)

    def edges(self) -> int:
        return sum(len(f) for f in self.followers)

    def active_followers(self, i: int) -> int:
        return self._active_followers[i]

    def deliveries_of(self, author: int) -> int:
        """Timeline rows one tweet of ``author`` (an index) must write."""
        return 0 if self.celebrity[author] else self._active_followers[author]

    def naive_of(self, author: int) -> int:
        """Rows a naive push to every follower would write (no celebrity or activity rule)."""
        return len(self.followers[author])

    def push_all_of(self, author: int) -> int:
        """Rows a push to every follower of a non-celebrity would write (no activity rule)."""
        return 0 if self.celebrity[author] else len(self.followers[author])

    def following(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in range(self.n)]
        for author, fs in enumerate(self.followers):
            for f in fs:
                out[f].append(author)
        return out

    def size_class(self, author: int, threshold: int) -> str:
        f = len(self.followers[author])
        if self.celebrity[author]:
            return "celebrity"
        if f < 100:
            return "small (<100 followers)"
        if f < 1000:
            return "medium (100-999)"
        return f"large (1000-{threshold - 1})"

    def expected_deliveries_per_tweet(self) -> float:
        total = self._cum[-1]
        acc, prev = 0.0, 0.0
        for a, c in zip(self._authors, self._cum):
            acc += (c - prev) * self.deliveries_of(a)
            prev = c
        return acc / total

    def describe(self) -> dict:
        n = self.n
        counts = sorted(len(f) for f in self.followers if f) or [0]
        ordinary = [len(self.followers[i]) for i in range(n) if not self.celebrity[i] and self.followers[i]]
        return {
            "users": n,
            "follow_edges": self.edges(),
            "celebrities": sum(self.celebrity),
            "celebrity_threshold": self.spec.celebrity_threshold,
            "inactive_users": n - sum(self.active),
            "inactive_share": round(1 - sum(self.active) / n, 3),
            "accounts_with_followers": len(ordinary) + sum(self.celebrity),
            "read_only_accounts": n - len(ordinary) - sum(self.celebrity),
            "mean_following": round(self.edges() / n, 1),
            "followers_of_accounts_with_followers": {
                "min": counts[0], "median": counts[len(counts) // 2],
                "mean": round(sum(counts) / len(counts), 1),
                "p90": counts[int(len(counts) * 0.9)], "p99": counts[int(len(counts) * 0.99)], "max": counts[-1],
                "max_ordinary": max(ordinary) if ordinary else 0,
                "power_law_min": self.spec.min_followers, "power_law_exponent": self.spec.exponent,
                "pushed_authors_with_1000_plus": sum(1 for f in ordinary if f >= 1000),
                "large_authors": sorted((f for f in ordinary if f >= 1000), reverse=True)[:10],
            },
            "authorship_beta": round(self.beta, 3),
            "target_deliveries_per_tweet": self.spec.deliveries_per_tweet,
            "expected_deliveries_per_tweet": round(self.expected_deliveries_per_tweet(), 1),
            "celebrity_tweet_share": self.spec.celebrity_tweet_share,
            "pure_readers": sum(self.pure),
            "heavy_readers": {"following_no_celebrity": len(self.heavy_pure),
                              "following_every_celebrity": len(self.heavy_hybrid),
                              "posters_followed_each": self.spec.heavy_following},
        }

    # --- events -----------------------------------------------------------------------
    def activity_events(self, now_ms: int) -> list[dict]:
        """One ``user_active`` per user: a day ago (active) or 60 days ago (inactive)."""
        return [
            {"type": "user_active", "user_id": uid,
             "at": now_ms - (DAY_MS if self.active[i] else 60 * DAY_MS)}
            for i, uid in enumerate(self.ids)
        ]

    def follow_events(self, now_ms: int) -> Iterator[dict]:
        """Every edge once, authors interleaved (so partitions fill evenly), seeded order."""
        rng = random.Random(self.seed * 7919 + 1)
        order = list(range(self.n))
        rng.shuffle(order)
        at = now_ms - 3600 * 1000
        iters = [iter(self.followers[a]) for a in order]
        # Round-robin over authors: an author's followers arrive spread over the load.
        while iters:
            alive = []
            for a, it in zip(order, iters):
                f = next(it, None)
                if f is None:
                    continue
                yield {"type": "followed", "follower_id": self.ids[f], "followee_id": self.ids[a], "at": at}
                alive.append((a, it))
            order = [a for a, _ in alive]
            iters = [it for _, it in alive]

    def authors(self, count: int, rng: random.Random) -> list[int]:
        """``count`` tweet authors (indices), drawn with the authorship weights."""
        total = self._cum[-1]
        out = []
        for _ in range(count):
            out.append(self._authors[bisect.bisect_left(self._cum, rng.random() * total)])
        return out


class TweetFactory:
    """Tweets stamped with the wall clock (Snowflake id and ``created_at``) when made."""

    def __init__(self, graph: Graph, worker_id: int = 901) -> None:
        self.graph = graph
        self.ids = SnowflakeGenerator(worker_id=worker_id)
        self.counter = itertools.count()

    def make(self, author: int) -> dict:
        tid = self.ids.next_id()
        now = time.time_ns() // 1_000_000
        aid = self.graph.ids[author]
        return {"type": "tweet_posted", "tweet_id": tid, "author_id": aid,
                "text": f"bench {next(self.counter)} by {aid}: " + "lorem ipsum " * 6, "created_at": now}


def _power_law(rng: random.Random, xmin: int, exponent: float, cap: int) -> int:
    while True:
        u = rng.random()
        x = int(xmin * (1.0 - u) ** (-1.0 / (exponent - 1.0)))
        if x <= cap:
            return x


def generate(spec: GraphSpec, seed: int) -> Graph:
    if spec.users < 10:
        raise ValueError("need at least 10 users")
    if spec.celebrities and spec.celebrity_threshold * 1.06 > spec.users * (1 - spec.pure_share) - spec.celebrities:
        raise ValueError("too few users for celebrities above the threshold")
    rng = random.Random(seed)
    n = spec.users
    ids = [USER_BASE + i for i in range(n)]
    celebs = set(rng.sample(range(n), spec.celebrities))
    pure = [False] * n
    non_celeb = [i for i in range(n) if i not in celebs]
    for i in rng.sample(non_celeb, int(n * spec.pure_share)):
        pure[i] = True
    fans = [i for i in range(n) if not pure[i] and i not in celebs]
    hybrid = set(rng.sample(fans, min(spec.hybrid_readers, len(fans)))) if celebs else set()
    others = [i for i in fans if i not in hybrid]
    active = [True] * n
    for i in rng.sample(range(n), int(round(n * spec.inactive_share))):
        active[i] = False
    # Readers of the benchmark must be able to read: keep the celebrities themselves active.
    for c in celebs:
        active[c] = True
    cap = spec.cap()
    others_pool = [i for i in range(n) if i not in celebs]
    n_posters = len(others_pool) if spec.posters is None else min(spec.posters, len(others_pool))
    posters = set(rng.sample(others_pool, n_posters))
    large = {}
    for k, i in zip(spec.large_authors, rng.sample(sorted(posters), len(spec.large_authors))):
        large[i] = min(k, cap)
    followers: list[list[int]] = []
    everyone = range(n)
    for i in range(n):
        if i in celebs:
            k = rng.randint(int(spec.celebrity_threshold * 1.02), int(spec.celebrity_threshold * 1.06))
            chosen = sorted(hybrid) + rng.sample(others, max(0, min(k - len(hybrid), len(others))))
        elif i in posters:
            k = large.get(i) or _power_law(rng, spec.min_followers, spec.exponent, cap)
            chosen = rng.sample(everyone, min(k + 1, n))
            chosen = [j for j in chosen if j != i][:k]
        else:
            chosen = []
        followers.append(sorted(chosen))
    heavy_pure: list[int] = []
    heavy_hybrid: list[int] = []
    if spec.heavy_readers and spec.heavy_following:
        poster_list = sorted(posters)
        pure_pool = [i for i in range(n) if pure[i] and active[i] and i not in celebs and i not in posters]
        hyb_pool = [i for i in sorted(hybrid) if active[i] and i not in posters]
        half = spec.heavy_readers // 2
        heavy_pure = rng.sample(pure_pool, min(half, len(pure_pool)))
        heavy_hybrid = rng.sample(hyb_pool, min(spec.heavy_readers - half, len(hyb_pool)))
        sets = [set(f) for f in followers]
        for h in heavy_pure + heavy_hybrid:
            for p in rng.sample(poster_list, min(spec.heavy_following, len(poster_list))):
                sets[p].add(h)
        followers = [sorted(f) for f in sets]
    g = Graph(spec=spec, seed=seed, ids=ids, followers=followers, active=active,
              celebrity=[i in celebs for i in range(n)], pure=pure, heavy_pure=heavy_pure,
              heavy_hybrid=heavy_hybrid)
    g._active_followers = [sum(1 for f in fs if active[f]) for fs in followers]
    _solve_authorship(g)
    return g


def _solve_authorship(g: Graph) -> None:
    """Authorship weights ``followers ** beta``: pick beta for the target deliveries per tweet."""
    spec = g.spec
    ordinary = [i for i in range(g.n) if g.active[i] and not g.celebrity[i] and g.followers[i]]
    celebs = [i for i in range(g.n) if g.celebrity[i]]
    share = spec.celebrity_tweet_share if celebs else 0.0
    target = spec.deliveries_per_tweet / (1.0 - share)
    logf = [math.log(len(g.followers[i])) for i in ordinary]
    d = [g.deliveries_of(i) for i in ordinary]

    def mean_for(beta: float) -> float:
        m = max(logf)
        ws = [math.exp(beta * (lf - m)) for lf in logf]
        return sum(w * x for w, x in zip(ws, d)) / sum(ws)

    lo, hi = -2.0, 4.0
    if mean_for(hi) <= target:
        beta = hi
    elif mean_for(lo) >= target:
        beta = lo
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            if mean_for(mid) < target:
                lo = mid
            else:
                hi = mid
        beta = (lo + hi) / 2
    g.beta = beta
    m = max(logf)
    weights = [math.exp(beta * (lf - m)) for lf in logf]
    total_ordinary = sum(weights)
    authors = list(ordinary)
    if celebs:
        per = total_ordinary * share / (1 - share) / len(celebs)
        weights += [per] * len(celebs)
        authors += celebs
    g._authors = authors
    g._cum = list(itertools.accumulate(weights))


def scaled_spec(scale: str) -> tuple[GraphSpec, int]:
    """The graph of each scale, and the celebrity hysteresis the pipeline runs with.

    ``full`` keeps the design's threshold (10,000 followers), so it needs more than
    10,000 users; follows cost the pipeline a few ms of CPU each, so most of them are
    read-only accounts and the follow graph stays near 110,000 edges, 30,000 of them from 200
    readers who follow 150 accounts each, as real users do (the read comparisons use them).
    """
    if scale == "full":
        threshold, hysteresis = 10_000, 1_000
        return GraphSpec(users=12_000, posters=1_500, large_authors=(8_000, 4_000, 2_000, 1_000),
                         celebrities=2, celebrity_threshold=threshold, min_followers=10, exponent=2.5,
                         hybrid_readers=300, heavy_readers=200, heavy_following=150,
                         max_ordinary_followers=threshold - hysteresis - 1), hysteresis
    if scale == "small":
        threshold, hysteresis = 150, 15
        return GraphSpec(users=800, posters=150, large_authors=(120, 60), celebrities=3,
                         celebrity_threshold=threshold, min_followers=6, exponent=2.5,
                         deliveries_per_tweet=30, hybrid_readers=40, heavy_readers=20, heavy_following=40,
                         max_ordinary_followers=threshold - hysteresis - 1), hysteresis
    raise ValueError(f"unknown scale {scale!r}")


def sample_followers(g: Graph, author: int, k: int, rng: random.Random, exclude: Sequence[int] = ()) -> list[int]:
    """Up to ``k`` active followers of ``author`` (indices)."""
    pool = [f for f in g.followers[author] if g.active[f] and f not in exclude]
    return rng.sample(pool, min(k, len(pool)))
