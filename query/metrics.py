"""Prometheus metrics of the query service, on a registry of its own (one per app, so tests
can build many apps in one process). Exposed at ``GET /metrics``.

* ``query_http_requests_total{method,route,status}``, ``query_http_request_seconds{method,route}``
* ``timeline_read_seconds{timeline,source}``: a timeline read (reader, hydration, handles);
  ``timeline`` is ``home`` or ``author``, ``source`` is ``cache``, ``store`` or ``rebuilt``
* ``timeline_cache_lookups_total{cache,result}``: ``cache`` is ``timeline``, ``following``,
  ``tweet`` (bodies) or ``handle``; ``result`` is ``hit`` or ``miss``
* ``timeline_store_queries_total{timeline}``: Cassandra queries made by reads
* ``timeline_redis_round_trips_total{timeline}``: Redis round trips made by the reader
* ``query_rate_limited_total{timeline}``: reads refused with 429 by the per-reader rate limit
* ``timeline_activity_events_total{result}``: ``user_active`` emitted, throttled or failed
* ``timeline_live_event_delay_seconds``: from a stage's notice (published right after its
  timeline write) to the tweet events it caused, written on an open stream (the wall clocks of
  the worker's and the query service's hosts: as close as those are synchronized)
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from api.common import HttpMetrics
from query.page import ReadStats

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class QueryMetrics(HttpMetrics):
    def __init__(self) -> None:
        super().__init__("query", buckets=_BUCKETS)
        self.read_latency = Histogram(
            "timeline_read_seconds", "Timeline read latency (reader, hydration, handles) by timeline and source",
            ["timeline", "source"], buckets=_BUCKETS, registry=self.registry,
        )
        self.cache = Counter(
            "timeline_cache_lookups_total", "Cache lookups of reads by cache and result",
            ["cache", "result"], registry=self.registry,
        )
        self.store_queries = Counter(
            "timeline_store_queries_total", "Cassandra queries made by reads", ["timeline"], registry=self.registry,
        )
        self.redis_round_trips = Counter(
            "timeline_redis_round_trips_total", "Redis round trips made by the reader", ["timeline"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "query_rate_limited_total", "Reads refused with 429 by the per-reader rate limit", ["timeline"],
            registry=self.registry,
        )
        self.live_streams = Gauge(
            "timeline_live_streams", "Open home-timeline streams (SSE) in this process", registry=self.registry,
        )
        self.live_closed = Counter(
            "timeline_live_closed_total", "Streams ended, by reason: client, behind (reset event), send_timeout, error",
            ["reason"], registry=self.registry,
        )
        self.live_reads = Histogram(
            "timeline_live_read_seconds", "A stream's read since its position, after a notice",
            buckets=_BUCKETS, registry=self.registry,
        )
        self.live_event_delay = Histogram(
            "timeline_live_event_delay_seconds",
            "From a stage's notice (right after its timeline write) to its tweet events written on a stream",
            buckets=_BUCKETS, registry=self.registry,
        )
        self.activity = Counter(
            "timeline_activity_events_total", "user_active events for readers: emitted, throttled or failed",
            ["result"], registry=self.registry,
        )

    def observe_read(self, timeline: str, source: str, seconds: float, stats: ReadStats) -> None:
        self.read_latency.labels(timeline, source).observe(seconds)
        for cache, result in (("timeline", stats.timeline_cache), ("following", stats.following_cache)):
            if result is not None:
                self.cache.labels(cache, result).inc()
        if stats.tweet_cache_hits:
            self.cache.labels("tweet", "hit").inc(stats.tweet_cache_hits)
        if stats.tweet_cache_misses:
            self.cache.labels("tweet", "miss").inc(stats.tweet_cache_misses)
        if stats.cassandra_queries:
            self.store_queries.labels(timeline).inc(stats.cassandra_queries)
        if stats.redis_round_trips:
            self.redis_round_trips.labels(timeline).inc(stats.redis_round_trips)
