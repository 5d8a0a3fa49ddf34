"""A bounded least-recently-used map whose entries expire, as pure data (the clock is passed in).

Used by :mod:`api.auth` for the bearer-token caches: one for tokens PostgreSQL knows
(positive) and one for tokens it does not (negative), each with its own size and TTL, so
that a flood of garbage tokens can only evict other garbage tokens, never valid ones.

``get`` of an expired entry removes it and answers ``None``; ``put`` of a new key beyond
``max_items`` drops the least recently used entry (a get counts as a use). Memory is
therefore bounded by ``max_items`` whatever the callers do.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlLru(Generic[K, V]):
    def __init__(self, max_items: int, ttl_s: float) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.max_items = max_items
        self.ttl_s = float(ttl_s)
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, now_s: float) -> V | None:
        """The value, if present and not expired at ``now_s`` (expires strictly after ``ttl_s``
        seconds: an entry put at ``t`` is found up to ``t + ttl_s`` exclusive)."""
        hit = self._items.get(key)
        if hit is None:
            return None
        value, expires = hit
        if now_s >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V, now_s: float) -> None:
        self._items[key] = (value, now_s + self.ttl_s)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def discard(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()
