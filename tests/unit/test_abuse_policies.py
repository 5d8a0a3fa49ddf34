"""Pure parts of the abuse limits: the token caches' LRU, client addresses behind proxies,
the following cap's decision, the in-process fallback buckets - and the limiters' behaviour
when Redis does not answer (a closed port: no server involved)."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.common import HttpMetrics
from api.errors import Problem
from api.limits import Limiter
from policies.client_address import UNKNOWN, address_key, client_address, parse_networks
from policies.following import (
    FollowVerdict,
    effective_following,
    follow_verdict,
    over_cap_detail,
)
from policies.ratelimit import LocalBuckets, take
from policies.ttl_cache import TtlLru

# --- TtlLru ------------------------------------------------------------------------------


def test_ttl_lru_expires_after_ttl():
    cache: TtlLru[str, int] = TtlLru(10, ttl_s=5)
    cache.put("a", 1, now_s=100.0)
    assert cache.get("a", 104.999) == 1
    assert cache.get("a", 105.0) is None
    assert len(cache) == 0  # an expired entry is removed when seen


def test_ttl_lru_drops_least_recently_used():
    cache: TtlLru[str, int] = TtlLru(3, ttl_s=60)
    for i, key in enumerate("abc"):
        cache.put(key, i, now_s=0.0)
    assert cache.get("a", 1.0) == 0  # a is now the most recently used
    cache.put("d", 3, now_s=1.0)
    assert cache.get("b", 1.0) is None
    assert [cache.get(k, 1.0) for k in "acd"] == [0, 2, 3]
    assert len(cache) == 3


def test_ttl_lru_put_refreshes_expiry_and_discard():
    cache: TtlLru[str, int] = TtlLru(3, ttl_s=10)
    cache.put("a", 1, 0.0)
    cache.put("a", 2, 8.0)
    assert cache.get("a", 17.0) == 2
    cache.discard("a")
    cache.discard("missing")
    assert cache.get("a", 17.0) is None


@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=300))
def test_ttl_lru_never_exceeds_its_size(ops):
    cache: TtlLru[int, int] = TtlLru(7, ttl_s=3)
    for t, (key, is_put) in enumerate(ops):
        if is_put:
            cache.put(key, key, float(t))
        else:
            got = cache.get(key, float(t))
            assert got is None or got == key
        assert len(cache) <= 7


@pytest.mark.parametrize("size,ttl", [(0, 1), (1, 0), (1, -1)])
def test_ttl_lru_rejects_bad_parameters(size, ttl):
    with pytest.raises(ValueError):
        TtlLru(size, ttl)


# --- client addresses --------------------------------------------------------------------

PROXIES = parse_networks(("10.0.0.0/8", "fd00::/8", "192.0.2.7"))


def test_without_trusted_proxies_the_peer_is_the_client():
    assert client_address("203.0.113.9", ["1.2.3.4"], ()) == "203.0.113.9"
    assert client_address(None, [], ()) == UNKNOWN


def test_forwarded_for_from_an_untrusted_peer_is_ignored():
    assert client_address("203.0.113.9", ["1.2.3.4"], PROXIES) == "203.0.113.9"


def test_first_untrusted_hop_from_the_right_is_the_client():
    # The client forged "6.6.6.6"; its real address was appended by the first trusted proxy.
    assert client_address("10.1.1.1", ["6.6.6.6, 198.51.100.4", "10.2.2.2"], PROXIES) == "198.51.100.4"
    assert client_address("192.0.2.7", ["198.51.100.4"], PROXIES) == "198.51.100.4"


def test_garbage_hop_stops_at_the_last_trusted_hop():
    assert client_address("10.1.1.1", ["198.51.100.4, not-an-ip"], PROXIES) == "10.1.1.1"
    assert client_address("10.1.1.1", ["198.51.100.4, not-an-ip, 10.3.3.3"], PROXIES) == "10.3.3.3"


def test_all_hops_trusted_gives_the_leftmost_and_no_header_gives_the_peer():
    assert client_address("10.1.1.1", ["10.9.9.9, 10.8.8.8"], PROXIES) == "10.9.9.9"
    assert client_address("10.1.1.1", [], PROXIES) == "10.1.1.1"


def test_ports_brackets_and_mapped_addresses():
    assert client_address("10.1.1.1", ["198.51.100.4:5555"], PROXIES) == "198.51.100.4"
    assert client_address("10.1.1.1", ["[2001:db8::1]:443"], PROXIES) == "2001:db8::1"
    assert client_address("::ffff:10.1.1.1", ["198.51.100.4"], PROXIES) == "198.51.100.4"


def test_address_keys():
    assert address_key("198.51.100.4") == "198.51.100.4"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:198.51.100.4") == "198.51.100.4"
    assert address_key("testclient") == "testclient"
    assert address_key("a b\nc" + "x" * 100) == "a_b_c" + "x" * 59
    assert address_key("") == UNKNOWN


def test_trusted_proxy_list_is_validated():
    assert parse_networks(("10.0.0.1",)) == (ipaddress.ip_network("10.0.0.1/32"),)
    with pytest.raises(ValueError, match="not an IP address or network: 'proxy.local'"):
        parse_networks(("proxy.local",))


@given(st.lists(st.ip_addresses(v=4).map(str), max_size=6), st.ip_addresses(v=4).map(str))
def test_client_never_comes_from_left_of_the_first_untrusted_hop(forged, real):
    """Whatever a client prepends, a trusted proxy's view of it wins."""
    real_is_proxy = any(ipaddress.ip_address(real) in net for net in PROXIES if net.version == 4)
    header = ", ".join([*forged, real])
    got = client_address("10.0.0.5", [header], PROXIES)
    if not real_is_proxy:
        assert got == real


# --- following cap -----------------------------------------------------------------------


def test_effective_following_applies_intents_over_the_projection():
    assert effective_following({1, 2, 3}, {}) == {1, 2, 3}
    assert effective_following({1, 2, 3}, {2: False, 4: True, 5: False, 1: True}) == {1, 3, 4}


def test_follow_verdicts():
    assert follow_verdict(0, False, 1) is FollowVerdict.NEW
    assert follow_verdict(4_999, False, 5_000) is FollowVerdict.NEW
    assert follow_verdict(5_000, False, 5_000) is FollowVerdict.OVER_CAP
    assert follow_verdict(6_000, False, 5_000) is FollowVerdict.OVER_CAP  # cap lowered below a count
    assert follow_verdict(5_000, True, 5_000) is FollowVerdict.ALREADY
    with pytest.raises(ValueError):
        follow_verdict(0, False, 0)


@given(st.lists(st.tuples(st.integers(1, 12), st.booleans()), max_size=60), st.integers(1, 8))
def test_accepting_by_verdict_never_exceeds_the_cap(ops, cap):
    """Follows and unfollows applied one at a time, each follow decided by the verdict."""
    following: set[int] = set()
    for target, is_follow in ops:
        if is_follow:
            verdict = follow_verdict(len(following), target in following, cap)
            if verdict is not FollowVerdict.OVER_CAP:
                following.add(target)
        else:
            following.discard(target)
        assert len(following) <= cap


def test_over_cap_detail_says_what_to_do():
    assert over_cap_detail(5_000, 5_000) == (
        "you already follow 5000 accounts, the most allowed is 5000; unfollow an account before following another")


# --- in-process fallback buckets ---------------------------------------------------------


def test_local_buckets_follow_the_token_bucket_math_per_subject():
    buckets = LocalBuckets(burst=2, rate_per_s=1.0, max_subjects=10)
    assert [buckets.take("a", 0.0).allowed for _ in range(3)] == [True, True, False]
    assert buckets.take("b", 0.0).allowed
    refused = buckets.take("a", 0.5)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.5)
    assert buckets.take("a", 1.0).allowed
    assert len(buckets) == 2


@given(st.lists(st.tuples(st.floats(0, 5), st.sampled_from("xy")), max_size=40))
def test_local_buckets_agree_with_take(steps):
    buckets = LocalBuckets(burst=3, rate_per_s=0.7, max_subjects=10)
    states: dict[str, object] = {}
    now = 0.0
    for dt, subject in steps:
        now += dt
        expected = take(states.get(subject), now, 3, 0.7)
        states[subject] = expected.state
        assert buckets.take(subject, now) == expected


def test_local_buckets_are_bounded_and_a_dropped_bucket_is_full():
    buckets = LocalBuckets(burst=1, rate_per_s=0.001, max_subjects=2)
    assert buckets.take("a", 0.0).allowed
    assert not buckets.take("a", 0.0).allowed
    buckets.take("b", 0.0)
    buckets.take("c", 0.0)  # drops a, the least recently used
    assert len(buckets) == 2
    assert buckets.take("a", 0.0).allowed


# --- limiters without Redis ----------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limiter(*, local: bool, clock: _Clock, metrics: HttpMetrics, limited: list[int]):
    from redis.asyncio import Redis

    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    return redis, Limiter(
        redis, name="t", burst=2, rate_per_s=0.5, prefix="unit:", refusal=lambda w: f"slow down, retry in {w} s",
        metrics=metrics, on_limited=lambda: limited.append(1), local_fallback=local, clock=clock,
    )


async def test_limiter_fails_open_without_redis():
    metrics, limited, clock = HttpMetrics("unit", (1.0,)), [], _Clock()
    redis, limiter = _limiter(local=False, clock=clock, metrics=metrics, limited=limited)
    try:
        for _ in range(10):
            await limiter.check("someone")
        assert limited == []
        assert metrics.registry.get_sample_value("unit_rate_limit_unavailable_total", {"limit": "t"}) == 10
    finally:
        await redis.aclose()


async def test_limiter_with_local_fallback_still_limits_and_says_when_to_retry():
    metrics, limited, clock = HttpMetrics("unit", (1.0,)), [], _Clock()
    redis, limiter = _limiter(local=True, clock=clock, metrics=metrics, limited=limited)
    try:
        await limiter.check("1.2.3.4")
        await limiter.check("1.2.3.4")
        with pytest.raises(Problem) as info:
            await limiter.check("1.2.3.4")
        assert info.value.status == 429
        assert info.value.headers == {"Retry-After": "2"}
        assert info.value.detail == "slow down, retry in 2 s"
        await limiter.check("5.6.7.8")  # another address has its own bucket
        clock.now += 2.0
        await limiter.check("1.2.3.4")
        assert limited == [1]
    finally:
        await redis.aclose()
