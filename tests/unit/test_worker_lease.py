"""Worker-id leases without a server: the arithmetic of ``policies/worker_lease.py``, the
generator's fences (``policies/snowflake.py``), and ``post.worker_id.WorkerIdSource``'s
decisions over an in-memory stand-in for the lease table (its SQL runs against the real
PostgreSQL in tests/integration/test_post_durability.py and test_post_service.py)."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.snowflake import DEFAULT_EPOCH_MS, IdWindowClosed, SnowflakeGenerator, parse_snowflake
from policies.worker_lease import Grant, Held, LeaseTiming, trusted_until
from post.worker_id import NoWorkerId, WorkerIdSource

T0 = 1_800_000_000_000  # a Unix ms well after the epoch


# --- timing -------------------------------------------------------------------------------


def test_default_timing_is_60_20_10_and_for_ttl_keeps_the_ratios() -> None:
    assert LeaseTiming() == LeaseTiming(60.0, 20.0, 10.0) == LeaseTiming.for_ttl(60)
    assert LeaseTiming.for_ttl(6) == LeaseTiming(6.0, 2.0, 1.0)
    assert LeaseTiming().trusted_s == 50.0
    assert LeaseTiming().retry_every_s() == 2.0 and LeaseTiming.for_ttl(3).retry_every_s() == 0.5


@pytest.mark.parametrize("ttl, renew, margin", [(0.5, 0.1, 0.1), (60, 20, 0), (60, 20, 60), (60, 50, 10),
                                                (60, 0, 10)])
def test_timing_that_could_not_renew_in_time_is_refused(ttl, renew, margin) -> None:
    with pytest.raises(ValueError):
        LeaseTiming(ttl, renew, margin)


def test_trust_ends_a_margin_before_the_ttl_counted_from_when_the_renewal_was_sent() -> None:
    timing = LeaseTiming()
    assert trusted_until(100.0, timing) == 150.0
    held = Held(Grant(7, 1, 0, T0 + 60_000, T0), trusted_until(100.0, timing))
    assert held.refusal(149.999) is None
    assert "the lease on worker id 7 was not renewed in time" in held.refusal(150.0)


# --- grants -------------------------------------------------------------------------------


def test_ids_of_a_grant_are_strictly_between_issue_after_and_expires_at() -> None:
    grant = Grant(3, 2, issue_after_ms=T0, expires_at_ms=T0 + 60_000, db_now_ms=T0 + 5)
    assert grant.refusal(T0 + 1) is None and grant.refusal(T0 + 59_999) is None
    assert "previous holder of worker id 3" in grant.refusal(T0)
    assert "clock ahead of PostgreSQL" in grant.refusal(T0 + 60_000)


def test_a_renewal_never_moves_the_expiry_back() -> None:
    grant = Grant(3, 2, T0, T0 + 60_000, T0)
    later = grant.renewed(Grant(3, 2, T0, T0 + 80_000, T0 + 20_000))
    assert later.expires_at_ms == T0 + 80_000 and later.issue_after_ms == T0
    # An answer computed from an earlier now() (it arrived late) cannot shorten it.
    assert later.renewed(Grant(3, 2, T0, T0 + 70_000, T0 + 10_000)).expires_at_ms == T0 + 80_000
    with pytest.raises(ValueError):
        grant.renewed(Grant(3, 3, T0, T0 + 90_000, T0))


# --- the generator's fences ----------------------------------------------------------------


def test_advance_past_puts_every_later_id_above_the_floor_even_with_a_clock_behind() -> None:
    now = [T0]
    gen = SnowflakeGenerator(5, clock=lambda: now[0])
    before = gen.next_id()
    gen.advance_past(T0 + 30_000)  # the previous holder's end is 30 s ahead of our clock
    ids = [gen.next_id() for _ in range(5000)]
    assert all(parse_snowflake(i).timestamp_ms > T0 + 30_000 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 5000 and ids[0] > before
    gen.advance_past(T0)  # a floor already passed changes nothing
    assert gen.next_id() > ids[-1]
    now[0] = T0 + 60_000  # the clock catches up: ids follow it again
    assert parse_snowflake(gen.next_id()).timestamp_ms == T0 + 60_000


def test_a_fresh_row_sets_no_floor() -> None:
    gen = SnowflakeGenerator(5, clock=lambda: T0)
    gen.advance_past(0)
    assert parse_snowflake(gen.next_id()) == (T0, 5, 0)


def test_before_ms_refuses_without_issuing_or_changing_anything() -> None:
    now = [T0 + 10]
    gen = SnowflakeGenerator(5, clock=lambda: now[0])
    first = gen.next_id(before_ms=T0 + 11)
    with pytest.raises(IdWindowClosed) as caught:
        now[0] = T0 + 11
        gen.next_id(before_ms=T0 + 11)
    assert caught.value.ms == T0 + 11 and caught.value.before_ms == T0 + 11
    assert gen.last_ms == T0 + 10
    assert gen.next_id(before_ms=T0 + 12) == first + (1 << 22)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-120_000, 120_000),  # holder's clock minus PostgreSQL's, ms
                          st.integers(0, 5_000),  # how long after the row expired it is taken, ms
                          st.lists(st.integers(0, 90_000), min_size=1, max_size=30),  # issue times
                          st.booleans()),  # released at the end (else it just expires)
                min_size=2, max_size=6))
def test_successive_holders_of_a_worker_id_never_issue_the_same_id(holders) -> None:
    """Rules 2 and 3 alone, with skewed clocks, late takeovers, renewals and releases: the
    ids of every generation of one worker id are disjoint (and ordered by generation)."""
    ttl_ms = 60_000
    row_expires = 0  # the row as PostgreSQL keeps it
    previous_max = -1
    for epoch, (skew, delay, times, released) in enumerate(holders, start=1):
        taken_at = row_expires + 1 + delay if row_expires else T0
        grant = Grant(1, epoch, issue_after_ms=row_expires, expires_at_ms=taken_at + ttl_ms, db_now_ms=taken_at)
        row_expires = grant.expires_at_ms
        db_now = [taken_at]
        gen = SnowflakeGenerator(1, clock=lambda: db_now[0] + skew)
        gen.advance_past(grant.issue_after_ms)
        ids = []
        for at in sorted(times):
            db_now[0] = taken_at + at
            if at >= 20_000 and at % 2 == 0:  # a renewal answered now
                grant = grant.renewed(Grant(1, epoch, grant.issue_after_ms, db_now[0] + ttl_ms, db_now[0]))
                row_expires = max(row_expires, grant.expires_at_ms)
            if db_now[0] >= row_expires:
                break  # the holder stopped trusting it earlier than this anyway
            try:
                ids.append(gen.next_id(before_ms=grant.expires_at_ms))
            except IdWindowClosed:
                continue  # this host's clock is too far ahead: no id, no harm
        if released and gen.last_ms is not None:  # expires_at := max(now, last id + 1), never up
            row_expires = min(row_expires, max(db_now[0], gen.last_ms + 1))
        if ids:
            assert min(ids) > previous_max, f"generation {epoch} issued an id at or below its predecessor's"
            previous_max = max(ids)


# --- WorkerIdSource over an in-memory lease table ----------------------------------------------


class MemoryLeases:
    """The lease statements' semantics on a dict (the SQL itself is tested on PostgreSQL)."""

    def __init__(self, size: int = 3) -> None:
        self.now_ms = T0
        self.rows = {n: {"holder": "", "epoch": 0, "issue_after": 0, "expires_at": 0} for n in range(size)}
        self.fail: Exception | None = None

    def _grant(self, n: int) -> Grant:
        r = self.rows[n]
        return Grant(n, r["epoch"], r["issue_after"], r["expires_at"], self.now_ms)

    async def take(self, holder: str, ttl_s: float) -> Grant | None:
        if self.fail:
            raise self.fail
        for n, r in self.rows.items():
            if r["expires_at"] < self.now_ms:
                r.update(holder=holder, epoch=r["epoch"] + 1, issue_after=max(r["expires_at"], r["issue_after"]),
                         expires_at=self.now_ms + int(ttl_s * 1000))
                return self._grant(n)
        return None

    async def renew(self, grant: Grant, holder: str, ttl_s: float) -> Grant | None:
        if self.fail:
            raise self.fail
        r = self.rows[grant.worker_id]
        if (r["holder"], r["epoch"]) != (holder, grant.epoch):
            return None
        r["expires_at"] = max(r["expires_at"], self.now_ms + int(ttl_s * 1000))
        return self._grant(grant.worker_id)

    async def holder_of(self, worker_id: int) -> tuple[str, int, int]:
        r = self.rows[worker_id]
        return r["holder"], r["epoch"], r["expires_at"]

    async def release(self, grant: Grant, holder: str, after_ms: int) -> bool:
        r = self.rows[grant.worker_id]
        if (r["holder"], r["epoch"]) != (holder, grant.epoch):
            return False
        r["expires_at"] = min(r["expires_at"], max(self.now_ms, after_ms))
        return True

    def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Clock:
    """The host's clocks: monotonic seconds ``t`` and wall-clock Unix ms ``wall``."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.wall = T0

    def __call__(self) -> float:
        return self.t


def source(leases: MemoryLeases, clock: Clock, instance: str = "me") -> WorkerIdSource:
    return WorkerIdSource(leases, epoch_ms=DEFAULT_EPOCH_MS, instance=instance, timing=LeaseTiming(), clock=clock,
                          wall_clock=lambda: clock.wall)


def run(coro):
    return asyncio.run(coro)


def test_ids_stop_when_a_lease_is_not_renewed_in_time_and_resume_after_a_renewal() -> None:
    leases, clock = MemoryLeases(), Clock()
    ids = source(leases, clock)
    assert run(ids.acquire()) == 0
    assert ids.state() == {"ok": True, "worker_id": 0, "mode": "leased", "epoch": 1, "trusted_for_s": 50.0}
    ids.next_id()
    leases.fail = OSError("connection refused")
    clock.t += 20
    run(ids._maintain_once())  # noqa: SLF001 - one background round
    assert ids.worker_id == 0  # still trusted: 30 s left
    clock.t += 30  # 50 s after the last renewal was sent
    with pytest.raises(NoWorkerId) as caught:
        ids.next_id()
    assert str(caught.value) == ("no Snowflake worker id is leased from PostgreSQL: the lease on worker id 0 was "
                                 "not renewed in time (trusted until 0.0 s ago); PostgreSQL error: OSError: "
                                 "connection refused")
    assert ids.state()["ok"] is False and "not renewed in time" in ids.state()["error"]
    leases.fail = None
    run(ids._maintain_once())  # noqa: SLF001 - the row was still ours: renewed, not retaken
    assert ids.worker_id == 0 and leases.rows[0]["epoch"] == 1


def test_a_lost_lease_stops_ids_at_once_and_says_who_took_it() -> None:
    leases, clock = MemoryLeases(size=1), Clock()
    ids = source(leases, clock)
    run(ids.acquire())
    leases.rows[0].update(holder="thief", epoch=2)
    assert not run(ids.renew())
    with pytest.raises(NoWorkerId, match=r"the lease on worker id 0 \(generation 1\) was taken over by 'thief' "
                                         r"\(generation 2\)"):
        ids.next_id()
    run(ids._maintain_once())  # noqa: SLF001 - no free row
    with pytest.raises(NoWorkerId, match="taken over by 'thief'.*; all 1024 worker ids are leased"):
        ids.next_id()


def test_a_new_holder_issues_above_everything_its_predecessor_could_issue() -> None:
    leases = MemoryLeases(size=1)
    old_host, new_host = Clock(), Clock()
    old = source(leases, old_host, "old")
    run(old.acquire())  # PostgreSQL's clock: T0, so the row expires at T0 + 60 s
    old_host.wall = T0 + 59_999
    last_old = old.next_id()
    # The old holder vanishes; once the row expired another process takes it, on a host
    # whose wall clock is a minute behind PostgreSQL's.
    leases.now_ms = leases.rows[0]["expires_at"] + 1
    new_host.wall = T0
    new = source(leases, new_host, "new")
    run(new.acquire())
    assert new.held.grant.epoch == 2 and new.held.grant.issue_after_ms == T0 + 60_000
    first_new = new.next_id()
    assert first_new > last_old
    assert parse_snowflake(first_new).timestamp_ms == T0 + 60_001


def test_a_host_clock_ahead_of_postgresql_gets_no_ids_past_the_lease() -> None:
    leases, clock = MemoryLeases(size=1), Clock()
    ids = source(leases, clock)
    run(ids.acquire())  # expires at T0 + 60 s by PostgreSQL's clock
    clock.wall = T0 + 59_999
    assert parse_snowflake(ids.next_id()).timestamp_ms == T0 + 59_999
    clock.wall = T0 + 61_000  # this host's clock runs 61 s ahead
    with pytest.raises(NoWorkerId, match="is this host's clock ahead of PostgreSQL's"):
        ids.next_id()


def test_release_lets_the_next_holder_start_right_after_the_last_id() -> None:
    leases, clock = MemoryLeases(size=1), Clock()
    ids = source(leases, clock)
    run(ids.acquire())
    clock.wall = T0 + 5_000
    ids.next_id()
    leases.now_ms = T0 + 1_000  # PostgreSQL's clock is 4 s behind this host's
    run(ids.release())
    assert ids.worker_id is None
    assert leases.rows[0]["expires_at"] == T0 + 5_001  # max(now, last id + 1), never later than before
    leases.now_ms = T0 + 2_000
    run(ids.release())  # twice: nothing more
    assert leases.rows[0]["expires_at"] == T0 + 5_001


def test_fixed_worker_ids_need_no_lease() -> None:
    ids = WorkerIdSource(None, fixed_worker_id=9, epoch_ms=DEFAULT_EPOCH_MS)
    assert parse_snowflake(ids.next_id()).worker_id == 9
    assert ids.state() == {"ok": True, "worker_id": 9, "mode": "fixed"}
    with pytest.raises(ValueError):
        WorkerIdSource(None, epoch_ms=DEFAULT_EPOCH_MS)
