"""The fault suite's pure parts: its plans, how answers are judged, probe pairs."""
from __future__ import annotations

from collections import Counter

import pytest

from ops.faults.load import BAD, FINE, OUTAGE, Call, verdict
from ops.faults.probes import pick_pairs
from ops.faults.plan import plan
from policies.partitioning import partition_for_id


def test_full_plan_has_ten_worker_kills_and_every_server_killed_and_paused_20_s():
    faults = plan("full")
    kinds = Counter((f.kind, f.target) for f in faults)
    assert sum(n for (kind, _), n in kinds.items() if kind == "worker_kill") == 10
    for server in ("kafka", "cassandra", "redis", "postgres"):
        assert kinds[("server_kill", server)] == 1
        assert kinds[("server_pause", server)] == 1
    assert {f.pause_s for f in faults if f.kind == "server_pause"} == {20.0}
    # Both workers are killed, alternately.
    assert {f.target for f in faults if f.kind == "worker_kill"} == {"w1", "w2"}


def test_short_plan_is_a_subset_for_ci():
    faults = plan("short")
    assert [f.kind for f in faults].count("worker_kill") == 2
    assert any(f.kind == "server_kill" and f.target == "redis" for f in faults)
    assert any(f.kind == "server_pause" and f.target == "kafka" for f in faults)
    with pytest.raises(ValueError):
        plan("medium")


@pytest.mark.parametrize("status,detail,expected", [
    (200, None, FINE), (201, None, FINE), (404, "no such tweet", FINE), (429, "slow down", FINE),
    (503, "the event log is unavailable", OUTAGE),
    (503, None, BAD), (500, "boom", BAD), (502, "bad gateway", BAD), (None, None, BAD),
])
def test_only_a_503_with_a_detail_is_an_acceptable_5xx(status, detail, expected):
    assert verdict(Call(0.0, "tweet", status, 0.1, detail=detail)) == expected


def test_probe_pairs_put_author_and_follower_on_each_partition():
    users = [10**12 + i for i in range(60)]
    pairs = pick_pairs(users, 4)
    assert sorted(pairs) == [0, 1, 2, 3]
    for p, (author, follower) in pairs.items():
        assert author != follower
        assert partition_for_id(author, 4) == p == partition_for_id(follower, 4)
    with pytest.raises(ValueError):
        pick_pairs(users[:3], 4)


def test_a_worker_kill_is_over_when_every_role_group_is():
    from ops.faults.suite import latest

    assert latest([0.1, 0.8]) == 0.8  # the split layout: the later of its two groups
    assert latest([0.3]) == 0.3
    assert latest([0.2, None]) is None  # a group never settled: not over
    assert latest([]) is None
