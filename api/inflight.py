"""Fetches under way, by key, shared by the callers that want the same key at the same time.

A fetch is a task of its own: callers await it through ``asyncio.shield``, so a caller that
goes away (its client disconnected) does not cancel it for the others; its failure reaches
every caller that waited; once it ends its keys are free, so the next call fetches anew.
Used by bearer-token lookups (``api.auth``) and author handles (``query.handles``).
"""
from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, Coroutine, Generic, Hashable, Iterable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedFetches(Generic[K, V]):
    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def get(self, key: K) -> asyncio.Task[V] | None:
        """The fetch under way for ``key``, if any (await it through ``asyncio.shield``)."""
        return self._tasks.get(key)

    def start(self, keys: Iterable[K], fetch: Coroutine[Any, Any, V]) -> asyncio.Task[V]:
        """Run ``fetch`` as the fetch of every key in ``keys`` until it ends."""
        keys = list(keys)
        task = asyncio.get_running_loop().create_task(fetch)
        for key in keys:
            self._tasks[key] = task
        task.add_done_callback(partial(self._ended, keys))
        return task

    def _ended(self, keys: list[K], task: asyncio.Task[V]) -> None:
        for key in keys:
            if self._tasks.get(key) is task:
                del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: the callers that waited got it raised

    def __iter__(self) -> Iterator[K]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)
