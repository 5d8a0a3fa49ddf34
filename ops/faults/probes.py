"""Delivery probes: is each partition delivering right now, and since when?

One probe pair per partition ``p``: an author whose tweets land on partition ``p`` of the
tweets topic and a follower whose deliveries land on partition ``p`` of the deliveries
topic (the stages are co-partitioned, so a worker owns partition ``p`` of both). A probe
tweet is posted on every partition every ``interval`` seconds; a poller reads each
follower's newest row of Cassandra ``user_timeline`` through ``newest`` (written by stage
2, so a row means *delivered*). ``resumed_after(t)`` answers, per partition, how long after ``t`` the first
probe posted after ``t`` was delivered: the time a fault stopped delivery on that partition.

Probes are posted through a ``post`` callable (the Post service over HTTP, or a Kafka
producer); a failed post (server down) is simply retried at the next tick.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from policies.partitioning import partition_for_id

# post(author_id, text) -> tweet id, or None if it was not accepted
PostFn = Callable[[int, str], Awaitable[int | None]]
# newest(follower ids) -> the newest tweet id delivered to each (None: none yet)
NewestFn = Callable[[list[int]], Awaitable[list[int | None]]]


@dataclass
class ProbeLog:
    posted: dict[int, tuple[int, float]] = field(default_factory=dict)  # tweet id -> (partition, accepted at)
    seen: dict[int, float] = field(default_factory=dict)  # tweet id -> first seen delivered at
    failed_posts: int = 0


def pick_pairs(candidates: list[int], partitions: int) -> dict[int, tuple[int, int]]:
    """From user ids, an (author, follower) pair on each partition; raises if some
    partition has fewer than two candidates."""
    by_partition: dict[int, list[int]] = {p: [] for p in range(partitions)}
    for user in candidates:
        by_partition[partition_for_id(user, partitions)].append(user)
    short = [p for p, users in by_partition.items() if len(users) < 2]
    if short:
        raise ValueError(f"no two candidate users on partitions {short}")
    return {p: (users[0], users[1]) for p, users in by_partition.items()}


class Probes:
    def __init__(self, pairs: dict[int, tuple[int, int]], post: PostFn, newest: NewestFn,
                 *, interval: float = 0.5, poll: float = 0.1) -> None:
        self.pairs = pairs  # partition -> (author, follower)
        self.post = post
        self.newest = newest
        self.interval = interval
        self.poll = poll
        self.log = ProbeLog()
        self._newest_seen: dict[int, int] = {p: 0 for p in pairs}
        self._pending: dict[int, list[int]] = {p: [] for p in pairs}  # posted, not seen yet
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._n = 0

    def start(self) -> "Probes":
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._post_loop()), asyncio.create_task(self._poll_loop())]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _post_one(self, partition: int, author: int) -> None:
        self._n += 1
        try:
            tweet_id = await self.post(author, f"probe {self._n} on partition {partition}")
        except Exception:  # noqa: BLE001 - a server is down: the next tick tries again
            tweet_id = None
        if tweet_id is None:
            self.log.failed_posts += 1
        else:
            self.log.posted[tweet_id] = (partition, time.monotonic())
            self._pending[partition].append(tweet_id)

    async def _post_loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            # One post per partition, in parallel; a slow (failing) post does not hold the others.
            await asyncio.gather(*(self._post_one(p, a) for p, (a, _f) in self.pairs.items()))
            await sleep_until(self._stop, began + self.interval)

    async def _poll_loop(self) -> None:
        followers = [(p, f) for p, (_a, f) in self.pairs.items()]
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                newest = await asyncio.wait_for(self.newest([f for _p, f in followers]), 5.0)
            except Exception:  # noqa: BLE001 - Cassandra down: poll again
                newest = None
            now = time.monotonic()
            if newest is not None:
                for (p, _f), tid in zip(followers, newest):
                    if tid is not None and tid > self._newest_seen[p]:
                        self._newest_seen[p] = tid
                        # Ids grow with time per author: every probe up to the newest is delivered.
                        still = []
                        for pending in self._pending[p]:
                            if pending <= tid:
                                self.log.seen[pending] = now
                            else:
                                still.append(pending)
                        self._pending[p] = still
            await sleep_until(self._stop, began + self.poll)

    # --- answers ---------------------------------------------------------------------------
    def resumed_after(self, t: float) -> dict[int, float | None]:
        """Per partition: seconds from ``t`` to the delivery of the first probe accepted
        after ``t`` (None: none delivered yet)."""
        out: dict[int, float | None] = {}
        for p in self.pairs:
            times = [self.log.seen[tid] for tid, (part, at) in self.log.posted.items()
                     if part == p and at >= t and tid in self.log.seen]
            out[p] = round(min(times) - t, 2) if times else None
        return out

    def latencies(self, since: float, until: float) -> list[float]:
        """Accepted -> delivered, seconds, of probes accepted in [since, until)."""
        return sorted(self.log.seen[tid] - at for tid, (_p, at) in self.log.posted.items()
                      if since <= at < until and tid in self.log.seen)

    async def wait_resumed(self, t: float, timeout: float) -> dict[int, float | None]:
        """Until every partition delivered a probe accepted after ``t`` (or the timeout)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            resumed = self.resumed_after(t)
            if all(v is not None for v in resumed.values()):
                return resumed
            await asyncio.sleep(0.1)
        return self.resumed_after(t)


async def sleep_until(stop: asyncio.Event, when: float) -> None:
    """Until ``when`` (time.monotonic()) or until ``stop`` is set, whichever comes first."""
    delay = when - time.monotonic()
    if delay > 0:
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass
