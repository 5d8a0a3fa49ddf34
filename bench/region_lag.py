"""Cross-region lag on the regions topology (``localenv/regions.py``; not a test).

    ./dev services up --topology regions
    python -m bench.region_lag [--tweets 200] [--in-flight 1]

Builds a small world through both regions' HTTP APIs (sign-ups and follows, some sent to
b's Post service, which forwards them to a's), then posts tweets in region a, ``--in-flight``
at a time, and for each polls one follower's home timeline (first page) in **both**
regions every 10 ms until the tweet is there: the time from the Post service's 201 (Kafka
acknowledged it in a) to the tweet in a follower's timeline read from a's query service
(the local fanout) and from b's (MirrorMaker 2, then b's own fanout). Every fifth tweet is
by the account everybody follows (19 followers: a celebrity, pulled at read time, when
``TL_CELEBRITY_THRESHOLD`` is below that; the tests run it so), the others by eight authors
with ~4 followers each. Writes
``bench/results/regions-lag-<ts>.{json,md}``.

The polling adds up to 10 ms (plus a read) to every number; both regions share this
machine's two cores with everything else, so this is the lag of the mechanism, not of a
network between regions (add the real round trip: MirrorMaker ships batches).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx

from localenv.host import REPO
from localenv.regions import RegionsTopology

RESULTS = REPO / "bench" / "results"


class RegionClient:
    """Both regions' HTTP APIs, as a person's app uses them."""

    def __init__(self, topo: RegionsTopology) -> None:
        self.topo = topo
        self.http = httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=64))
        self.tokens: dict[int, str] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    def url(self, region: str, service: str) -> str:
        at = self.topo.region(region).at
        return at.post_url if service == "post" else at.query_url

    def auth(self, user: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def signup(self, region: str) -> int:
        # Each sign-up from an address of its own, as people sign up from their own devices
        # (the Post service limits sign-ups per client address).
        address = f"127.9.{random.randrange(256)}.{random.randrange(1, 255)}"
        async with httpx.AsyncClient(timeout=15, transport=httpx.AsyncHTTPTransport(local_address=address)) as one:
            resp = await one.post(f"{self.url(region, 'post')}/v1/users",
                                  json={"handle": f"r_{uuid.uuid4().hex[:20]}"})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        self.tokens[int(body["user_id"])] = body["token"]
        return int(body["user_id"])

    async def follow(self, region: str, follower: int, followee: int) -> None:
        resp = await self.http.post(f"{self.url(region, 'post')}/v1/users/{follower}/following",
                                    json={"target_user_id": str(followee)}, headers=self.auth(follower))
        assert resp.status_code == 200, resp.text

    async def unfollow(self, region: str, follower: int, followee: int) -> None:
        resp = await self.http.delete(f"{self.url(region, 'post')}/v1/users/{follower}/following/{followee}",
                                      headers=self.auth(follower))
        assert resp.status_code == 200, resp.text

    async def tweet(self, region: str, author: int, text: str) -> int:
        resp = await self.http.post(f"{self.url(region, 'post')}/v1/tweets", json={"text": text},
                                    headers={**self.auth(author), "Idempotency-Key": uuid.uuid4().hex})
        assert resp.status_code == 201, resp.text
        return int(resp.json()["tweet_id"])

    async def delete(self, region: str, author: int, tweet_id: int) -> None:
        resp = await self.http.delete(f"{self.url(region, 'post')}/v1/tweets/{tweet_id}", headers=self.auth(author))
        assert resp.status_code == 204, resp.text

    async def home(self, region: str, user: int) -> httpx.Response:
        return await self.http.get(f"{self.url(region, 'query')}/v1/users/{user}/timelines/home",
                                   params={"limit": 100}, headers=self.auth(user))

    async def home_ids(self, region: str, user: int) -> list[int] | None:
        """The ids of the first page; None while the region does not know the account (401:
        it has not reached b's PostgreSQL replica yet)."""
        resp = await self.home(region, user)
        if resp.status_code == 401:
            return None
        assert resp.status_code == 200, resp.text
        return [int(t["tweet_id"]) for t in resp.json()["data"]]

    async def wait_for(self, region: str, user: int, check: Callable[[list[int]], bool],
                       timeout: float = 60.0, every: float = 0.01) -> float:
        """Poll ``user``'s first page in ``region`` until ``check(ids)``; the seconds it took."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            ids = await self.home_ids(region, user)
            if ids is not None and check(ids):
                return time.monotonic() - began
            await asyncio.sleep(every)
        raise AssertionError(f"user {user} in region {region}: not seen within {timeout} s")


class World:
    """Users of both regions: one account everybody follows, eight authors with their followers."""

    def __init__(self, client: RegionClient, users: list[int], follows: dict[int, list[int]]) -> None:
        self.client = client
        self.users = users
        self.celebrity = users[0]
        self.authors = users[1:9]
        self.follows = follows  # author -> followers
        # Pulled at read time only if the topology's threshold is below its followers.
        self.celebrity_pulled = len(follows[self.celebrity]) >= client.topo.base.celebrity_threshold

    @classmethod
    async def build(cls, client: RegionClient, rng: random.Random, users_a: int = 15, users_b: int = 5) -> "World":
        users = [await client.signup("a") for _ in range(users_a)] + [await client.signup("b") for _ in range(users_b)]
        follows: dict[int, list[int]] = {u: [] for u in users}
        for follower in users[1:]:
            await client.follow(rng.choice("ab"), follower, users[0])
            follows[users[0]].append(follower)
        for follower in users[9:]:
            for author in rng.sample(users[1:9], 3):
                await client.follow(rng.choice("ab"), follower, author)
                follows[author].append(follower)
        # b serves its readers once its PostgreSQL replica has their accounts.
        for user in users:
            await client.wait_for("b", user, lambda ids: True)
        return cls(client, users, follows)

    def pick(self, rng: random.Random, i: int) -> tuple[int, int]:
        """(author, a follower of it) of the i-th tweet: every fifth by the celebrity."""
        author = self.celebrity if i % 5 == 0 else rng.choice(self.authors)
        return author, rng.choice(self.follows[author])


async def measure(client: RegionClient, world: World, tweets: int, in_flight: int,
                  rng: random.Random) -> list[dict[str, Any]]:
    """Post ``tweets`` tweets in a; for each, the lag to a follower's timeline in a and in b."""
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> dict[str, Any]:
        author, follower = world.pick(rng, i)
        async with gate:
            tweet_id = await client.tweet("a", author, f"lag probe {i}")
            local, remote = await asyncio.gather(
                client.wait_for("a", follower, lambda ids: tweet_id in ids),
                client.wait_for("b", follower, lambda ids: tweet_id in ids))
        return {"tweet_id": tweet_id, "author": author, "celebrity": author == world.celebrity and world.celebrity_pulled,
                "a_s": local, "b_s": remote}

    return list(await asyncio.gather(*(one(i) for i in range(tweets))))


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        q = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))]  # noqa: E731
        return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1),
                "p99_ms": round(q(0.99) * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}

    out: dict[str, Any] = {}
    for label, chosen in (("all", samples), ("pushed", [s for s in samples if not s["celebrity"]]),
                          ("celebrity", [s for s in samples if s["celebrity"]])):
        if chosen:
            out[label] = {"a": stats([s["a_s"] for s in chosen]), "b": stats([s["b_s"] for s in chosen])}
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    topo = RegionsTopology()
    rng = random.Random(args.seed)
    client = RegionClient(topo)
    try:
        world = await World.build(client, rng)
        await measure(client, world, 10, args.in_flight, rng)  # warm-up, not counted
        began = time.monotonic()
        samples = await measure(client, world, args.tweets, args.in_flight, rng)
        took = time.monotonic() - began
    finally:
        await client.aclose()
    return {"benchmark": "region_lag", "timestamp": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
            "tweets": args.tweets, "in_flight": args.in_flight, "seconds": round(took, 1),
            "lag": summary(samples)}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Cross-region lag (regions topology)", "",
        f"`python -m bench.region_lag --tweets {result['tweets']} --in-flight {result['in_flight']}` "
        f"({result['timestamp']}, both regions on this 2-core machine; {result['seconds']} s): "
        "from the Post service's 201 in region a to the tweet in a follower's first page, read from "
        "each region's query service (polled every 10 ms).", "",
        "| tweets | n | a p50 / p99 (ms) | b p50 / p99 (ms) | b max (ms) |", "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, row in result["lag"].items():
        a, b = row["a"], row["b"]
        lines.append(f"| {label} | {a['n']} | {a['p50_ms']} / {a['p99_ms']} | {b['p50_ms']} / {b['p99_ms']} "
                     f"| {b['max_ms']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.region_lag", description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=200)
    # Every tweet in flight polls two timelines every 10 ms (200 reads/s): more in flight
    # loads this machine's two cores enough to slow the pipeline being measured.
    parser.add_argument("--in-flight", type=int, default=1)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/regions-lag-<ts>.json)")
    args = parser.parse_args(argv)
    if args.tweets < 1 or args.in_flight < 1:
        parser.error("--tweets and --in-flight must be >= 1")
    result = asyncio.run(run(args))
    out = args.out or RESULTS / f"regions-lag-{result['timestamp']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
