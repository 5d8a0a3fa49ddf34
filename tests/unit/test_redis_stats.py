"""bench/redis_stats.py: Redis's command times diffed around a window (pure parts)."""
from bench.redis_stats import command_delta, command_line


def test_delta_orders_by_time_and_skips_idle_commands():
    before = {"zadd": (10, 100), "get": (5, 50), "set": (1, 10)}
    after = {"zadd": (30, 2_100), "get": (5, 50), "set": (3, 5_010), "evalsha": (2, 9_000)}
    rows = command_delta(before, after)
    assert [r["command"] for r in rows] == ["evalsha", "set", "zadd"]  # get made no calls
    assert rows[0] == {"command": "evalsha", "calls": 2, "s": 0.01, "us_per_call": 4500.0}
    assert rows[2] == {"command": "zadd", "calls": 20, "s": 0.0, "us_per_call": 100.0}
    assert len(command_delta(before, after, top=1)) == 1


def test_missing_snapshot_gives_nothing():
    assert command_delta(None, {"get": (1, 1)}) is None
    assert command_delta({}, None) is None
    assert command_line(None) == ""


def test_line():
    rows = [{"command": "zadd", "calls": 1234, "s": 0.5, "us_per_call": 405.2}]
    assert command_line(rows) == "zadd 1,234 calls 0.5 s (405.2 us each)"
