"""A seeded, randomized load through the public HTTP API, with every answer recorded.

:class:`Api` calls the Post service and the query service (child processes) and records
each answer as a :class:`Call`; :func:`verdict` sorts answers into fine, outage (a 503
with a ``detail``) and bad (any other 5xx, a 503 without a ``detail``, no answer at all).
:class:`Scenario` signs users up, builds a follow graph with celebrities (the threshold is
the cluster's, small), then runs writers (tweets with an ``Idempotency-Key``, retried on a
503 as a client would; deletes of one's own tweets; follows, unfollows, refollows; one
celebrity falling below the threshold and climbing back) and readers (home timelines,
sometimes paged to the end) at fixed rates until told to stop. Every 201 of a tweet is
kept: each must end up in its author's followers' timelines.
"""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from ops.faults.probes import sleep_until

OUTAGE = "outage"
BAD = "bad"
FINE = "fine"


@dataclass
class Call:
    at: float  # time.monotonic() when the request was sent
    op: str
    status: int | None  # None: no answer (connection refused, timeout)
    elapsed: float
    detail: str | None = None
    error: str | None = None


def verdict(call: Call) -> str:
    if call.status is None:
        return BAD
    if call.status == 503:
        return OUTAGE if call.detail else BAD
    if call.status >= 500:
        return BAD
    return FINE


class Api:
    """The Post service and the query service over HTTP; every answer is recorded."""

    def __init__(self, post_url: str, query_url: str, *, timeout: float = 30.0) -> None:
        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them:
        # a request sent on a connection the server is closing gets no answer (ReadError),
        # which would be counted against the service.
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0)
        self.post = httpx.AsyncClient(base_url=post_url, timeout=timeout, limits=limits)
        self.query = httpx.AsyncClient(base_url=query_url, timeout=timeout, limits=limits)
        self.calls: list[Call] = []
        self.in_flight = 0

    async def close(self) -> None:
        await self.post.aclose()
        await self.query.aclose()

    async def request(self, client: httpx.AsyncClient, op: str, method: str, url: str,
                      **kwargs: Any) -> httpx.Response | None:
        began = time.monotonic()
        self.in_flight += 1
        try:
            resp = await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.calls.append(Call(began, op, None, time.monotonic() - began, error=repr(exc)[:300]))
            return None
        finally:
            self.in_flight -= 1
        detail = None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail") or None
            except Exception:  # noqa: BLE001 - not JSON: no detail
                detail = None
        self.calls.append(Call(began, op, resp.status_code, time.monotonic() - began, detail=detail))
        return resp

    def bad_calls(self, since: float = 0.0, until: float = float("inf")) -> list[Call]:
        return [c for c in self.calls if since <= c.at < until and verdict(c) == BAD]

    def summary(self, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
        window = [c for c in self.calls if since <= c.at < until]
        return {
            "requests": len(window),
            "by_verdict": dict(Counter(verdict(c) for c in window)),
            "by_status": {str(k): v for k, v in sorted(Counter(c.status for c in window).items(),
                                                       key=lambda kv: str(kv[0]))},
        }


@dataclass
class User:
    user_id: int
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Scenario:
    api: Api
    seed: int
    users: int = 80
    celebrities: int = 2
    threshold: int = 20
    hysteresis: int = 5
    rng: random.Random = field(init=False)
    people: dict[int, User] = field(default_factory=dict)
    celebs: list[int] = field(default_factory=list)
    following: dict[int, set[int]] = field(default_factory=dict)  # as the client believes
    accepted: dict[int, int] = field(default_factory=dict)  # tweet id -> author, every 201
    deleted: set[int] = field(default_factory=set)  # tweet ids whose DELETE got a 204
    steps: int = 0
    tweets_posted: int = 0
    demoted: bool = False
    promoted_again: bool = False
    unknown_outcome: int = 0  # tweets never answered 201 after retries (may be on the log)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # --- users and the graph ----------------------------------------------------------------
    async def signup(self, prefix: str = "u") -> User | None:
        handle = f"{prefix}_{uuid.uuid4().hex[:16]}"
        for _ in range(5):
            resp = await self.api.request(self.api.post, "signup", "POST", "/v1/users", json={"handle": handle})
            if resp is not None and resp.status_code == 201:
                body = resp.json()
                return User(int(body["user_id"]), body["token"])
            await asyncio.sleep(1.0)
        return None

    async def setup(self, concurrency: int = 16) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                user = await self.signup()
                if user is None:
                    raise RuntimeError("could not sign a user up")
                self.people[user.user_id] = user
                self.following[user.user_id] = set()

        await asyncio.gather(*(one() for _ in range(self.users)))
        ids = sorted(self.people)
        self.celebs = self.rng.sample(ids, self.celebrities)
        pairs: list[tuple[int, int]] = []
        for u in ids:
            for v in self.rng.sample(ids, self.rng.randint(2, 10)):
                if u != v:
                    pairs.append((u, v))
        for c in self.celebs:
            fans = [u for u in ids if u != c]
            for u in self.rng.sample(fans, min(len(fans), self.threshold + self.rng.randint(3, 8))):
                pairs.append((u, c))

        async def follow(pair: tuple[int, int]) -> None:
            async with sem:
                await self.follow(*pair)

        await asyncio.gather(*(follow(p) for p in pairs))

    async def follow(self, user: int, target: int) -> bool:
        resp = await self.api.request(self.api.post, "follow", "POST", f"/v1/users/{user}/following",
                                      json={"target_user_id": str(target)}, headers=self.people[user].auth)
        ok = resp is not None and resp.status_code == 200
        if ok:
            self.following[user].add(target)
        return ok

    async def unfollow(self, user: int, target: int) -> bool:
        resp = await self.api.request(self.api.post, "unfollow", "DELETE",
                                      f"/v1/users/{user}/following/{target}", headers=self.people[user].auth)
        ok = resp is not None and resp.status_code == 200
        if ok:
            self.following[user].discard(target)
        return ok

    # --- writes ---------------------------------------------------------------------------
    async def tweet(self, author: int, text: str, *, retries: int = 2) -> int | None:
        """POST /v1/tweets with an Idempotency-Key, retried with the same key after a 503 or
        no answer, as the 503's ``detail`` asks. Returns the tweet id of a 201."""
        key = uuid.uuid4().hex
        headers = {**self.people[author].auth, "Idempotency-Key": key}
        for attempt in range(retries + 1):
            resp = await self.api.request(self.api.post, "tweet", "POST", "/v1/tweets",
                                          json={"text": text}, headers=headers)
            if resp is not None and resp.status_code == 201:
                tweet_id = int(resp.json()["tweet_id"])
                self.accepted[tweet_id] = author
                return tweet_id
            if resp is not None and resp.status_code not in (409, 503):
                return None  # refused (4xx): nothing to retry
            if attempt < retries:
                await asyncio.sleep(1.0 + attempt)
        self.unknown_outcome += 1
        return None

    async def delete(self, author: int, tweet_id: int) -> bool:
        resp = await self.api.request(self.api.post, "delete", "DELETE", f"/v1/tweets/{tweet_id}",
                                      headers=self.people[author].auth)
        ok = resp is not None and resp.status_code == 204
        if ok:
            self.deleted.add(tweet_id)
        return ok

    async def step(self) -> None:
        """One randomized write."""
        self.steps += 1
        rng, ids = self.rng, sorted(self.people)
        if self.steps == 150 and not self.demoted:
            await self._demote(self.celebs[0])
            return
        if self.steps == 400 and self.demoted and not self.promoted_again:
            await self._promote(self.celebs[0])
            return
        roll = rng.random()
        if roll < 0.74:
            author = rng.choice(ids)
            self.tweets_posted += 1
            await self.tweet(author, f"note {self.tweets_posted} #{rng.randint(0, 999)}")
        elif roll < 0.80 and self.accepted:
            tweet_id, author = rng.choice(list(self.accepted.items())[-200:])
            if tweet_id not in self.deleted:
                await self.delete(author, tweet_id)
        elif roll < 0.90:
            user, target = rng.choice(ids), rng.choice(ids)
            if user != target:
                await self.follow(user, target)
        else:
            user = rng.choice(ids)
            if self.following[user]:
                target = rng.choice(sorted(self.following[user]))
                await self.unfollow(user, target)
                if rng.random() < 0.3:
                    await self.follow(user, target)

    async def _demote(self, celeb: int) -> None:
        """Enough of ``celeb``'s followers leave to fall below threshold - hysteresis."""
        fans = [u for u, f in self.following.items() if celeb in f]
        keep = max(0, self.threshold - self.hysteresis - 3)
        for u in fans[keep:]:
            await self.unfollow(u, celeb)
        self.demoted = True

    async def _promote(self, celeb: int) -> None:
        ids = [u for u in sorted(self.people) if u != celeb and celeb not in self.following[u]]
        for u in self.rng.sample(ids, min(len(ids), self.threshold + 2)):
            await self.follow(u, celeb)
        self.promoted_again = True

    # --- reads ----------------------------------------------------------------------------
    async def read(self) -> None:
        user = self.rng.choice(sorted(self.people))
        pages = 5 if self.rng.random() < 0.1 else 1
        cursor = None
        for _ in range(pages):
            params: dict[str, Any] = {"limit": 20}
            if cursor:
                params["cursor"] = cursor
            resp = await self.api.request(self.api.query, "home", "GET", f"/v1/users/{user}/timelines/home",
                                          params=params, headers=self.people[user].auth)
            if resp is None or resp.status_code != 200:
                return
            cursor = resp.json()["meta"]["next_cursor"]
            if not cursor:
                return

    # --- pacing ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, *, writes_per_s: float, reads_per_s: float,
                  writers: int = 4, readers: int = 4) -> None:
        """Writers and readers at the given total rates until ``stop`` is set. A request that
        waits (an outage) holds its task, so the rates drop while servers are away."""

        async def loop(action: Any, period: float) -> None:
            next_at = time.monotonic()
            while not stop.is_set():
                await action()
                next_at = max(next_at + period, time.monotonic() - period)
                await sleep_until(stop, next_at)

        tasks = [loop(self.step, writers / writes_per_s) for _ in range(writers)]
        if reads_per_s > 0:
            tasks += [loop(self.read, readers / reads_per_s) for _ in range(readers)]
        await asyncio.gather(*tasks)
