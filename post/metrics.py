"""Prometheus metrics of the Post service: the HTTP metrics of :class:`api.common.HttpMetrics`
(``post_http_requests_total``, ``post_http_request_seconds``, the authentication and
rate-limit counters), events produced, requests refused by a rate limit
(``post_rate_limited_total{limit}``) and follows refused by the following cap
(``post_following_cap_total``). Exposed at ``GET /metrics``."""
from __future__ import annotations

from prometheus_client import Counter

from api.common import HttpMetrics


class Metrics(HttpMetrics):
    def __init__(self) -> None:
        super().__init__("post", buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.events = Counter(
            "post_events_produced_total",
            "Events acknowledged by Kafka, by type",
            ["type"],
            registry=self.registry,
        )
        # limit: post (tweets per user), signup (per address), follow (follows and unfollows
        # per user), token_lookup (bearer-token lookups per address, before authentication)
        self.rate_limited = Counter(
            "post_rate_limited_total", "Requests refused with 429, by limit", ["limit"], registry=self.registry
        )
        self.following_cap = Counter(
            "post_following_cap_total", "Follows refused (409) because the user follows TL_MAX_FOLLOWING accounts",
            registry=self.registry,
        )
