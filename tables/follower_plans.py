"""Each author's followers grouped by delivery partition, kept between batches (stage 1).

A pushed tweet goes to every follower of its author: the ``follower_edges`` rows of the
author (one RocksDB prefix scan, an int parsed per edge), grouped by the partition that owns
each follower's timeline (``policies.fanout.plan_recipients``). Until a follow of that author
changes, every tweet of theirs gets the same groups: at half the fanout capacity the scan and
the grouping were 12% of the worker's main thread (py-spy, 2026-12-01). Only the fanout agent
writes the edges (concurrency 1): it drops an author's groups whenever one of the author's
edges changes (``drop``), and clears them all when partitions move (another worker may have
changed an author meanwhile, or its changelog is replayed into this one). Bounded by the
recipients held: past ``limit`` it starts again empty.
"""
from __future__ import annotations

from typing import Callable

from policies.fanout import Groups


class FollowerPlans:
    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self.plans: dict[int, Groups] = {}
        self.held = 0  # recipients in self.plans

    def get(self, author_id: int, build: Callable[[], Groups]) -> Groups:
        """The author's groups: kept ones, or ``build()``'s (then kept). Callers must not change them."""
        groups = self.plans.get(author_id)
        if groups is None:
            groups = build()
            size = _size(groups)
            if self.held + size > self.limit:
                self.clear()
            self.plans[author_id] = groups
            self.held += size
        return groups

    def drop(self, author_id: int) -> None:
        groups = self.plans.pop(author_id, None)
        if groups is not None:
            self.held -= _size(groups)

    def clear(self) -> None:
        self.plans.clear()
        self.held = 0


def _size(groups: Groups) -> int:
    return sum(len(recipients) for _, recipients in groups)
