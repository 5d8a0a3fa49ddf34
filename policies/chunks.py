"""Splitting a batch's timeline writes into chunks that become visible one after another.

Stage 2 writes a batch in chunks of users: each chunk's Cassandra rows, then its users'
metadata, then its Redis cache updates and live notices; several chunks are in flight at
once, so the first users' timelines change while later chunks are still being written,
and one chunk's Redis work overlaps another's Cassandra writes. A user's writes are never
split over chunks: the per-user order (rows before metadata, Cassandra before Redis) is the
one a single write of the whole batch had (``agents/deliver.py``).
"""
from __future__ import annotations

from typing import Hashable, Mapping, TypeVar

K = TypeVar("K", bound=Hashable)


def plan_chunks(weights: Mapping[K, int], max_rows: int) -> list[list[K]]:
    """Keys of ``weights`` (key -> writes), in their order, grouped into consecutive chunks of
    at most ``max_rows`` writes each; a key is never split, and one heavier than ``max_rows``
    is a chunk of its own. Every key is in exactly one chunk; no chunk is empty."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    chunks: list[list[K]] = []
    current: list[K] = []
    size = 0
    for key, weight in weights.items():
        if current and size + weight > max_rows:
            chunks.append(current)
            current, size = [], 0
        current.append(key)
        size += weight
    if current:
        chunks.append(current)
    return chunks
