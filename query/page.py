"""What a read returns (pages of tweets) and what it cost (the counts behind the read metrics)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

if TYPE_CHECKING:
    from sinks.cassandra import CassandraStore


# Not frozen: a page builds ~50 of these per read and a frozen dataclass's __init__ costs
# four times as much (object.__setattr__ per field); nothing mutates them. Hashable by value.
@dataclass(slots=True, unsafe_hash=True)
class Tweet:
    tweet_id: int
    author_id: int
    # None when the cache gave only the rendered tail, which holds them (``sinks.redis_tweets``).
    text: str | None
    created_at: int | None
    # The page JSON after the author's handle, when the cache had it pre-rendered
    # (``schemas.tweet_json.render_tail``; the same bytes as rendering the fields).
    rendered: bytes | None = field(default=None, compare=False, repr=False)


@dataclass
class ReadStats:
    """What one read cost and which caches answered (for metrics and tests)."""

    redis_round_trips: int = 0
    cassandra_queries: int = 0
    timeline_cache: str | None = None  # "hit", "miss", or None (not consulted)
    following_cache: str | None = None  # "hit" or "miss"
    tweet_cache_hits: int = 0
    tweet_cache_misses: int = 0
    cache_bypassed: bool = False  # Redis failed: the page was read from Cassandra alone


@dataclass
class Page:
    tweets: list[Tweet]
    next_below: int | None  # pass as ``below`` for the next page; None at the real end
    source: str  # "cache", "store" or "rebuilt"
    pulled: set[int] = field(default_factory=set)  # tweet ids that came from pulls
    stats: ReadStats = field(default_factory=ReadStats)
    # Cache work left for after the answer (a miss's timeline fill), when the caller asked
    # for it (``HomeTimelineReader.page(fill_later=True)``); a Redis failure in it is logged.
    after: Callable[[], Awaitable[None]] | None = None


async def store_query(cassandra: CassandraStore, stats: ReadStats, name: str, params: Sequence[Any]) -> list:
    """One Cassandra query of a read, counted in its stats."""
    stats.cassandra_queries += 1
    return await cassandra.execute(name, params)
