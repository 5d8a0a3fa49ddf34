import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.snowflake import (
    DEFAULT_EPOCH_MS,
    MAX_ID,
    MAX_SEQUENCE,
    MAX_TIMESTAMP,
    SnowflakeGenerator,
    max_id_for_time,
    min_id_for_time,
    parse_snowflake,
    snowflake_sequence,
    snowflake_timestamp_ms,
    snowflake_worker,
)

T0 = DEFAULT_EPOCH_MS + 1_000_000


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now


def test_bit_layout_of_first_id():
    clock = FakeClock(DEFAULT_EPOCH_MS + 5)
    gen = SnowflakeGenerator(worker_id=3, clock=clock)
    assert gen.next_id() == (5 << 22) | (3 << 12) | 0
    assert gen.next_id() == (5 << 22) | (3 << 12) | 1


def test_helpers_decompose_an_id():
    clock = FakeClock(T0)
    gen = SnowflakeGenerator(worker_id=1023, clock=clock)
    gen.next_id()
    i = gen.next_id()
    assert snowflake_timestamp_ms(i) == T0
    assert snowflake_worker(i) == 1023
    assert snowflake_sequence(i) == 1
    assert parse_snowflake(i) == (T0, 1023, 1)


def test_custom_epoch():
    clock = FakeClock(1_000_250)
    gen = SnowflakeGenerator(worker_id=0, epoch_ms=1_000_000, clock=clock)
    i = gen.next_id()
    assert i >> 22 == 250
    assert snowflake_timestamp_ms(i, epoch_ms=1_000_000) == 1_000_250


@pytest.mark.parametrize("bad", [-1, 1024, 10**6])
def test_worker_id_out_of_range(bad):
    with pytest.raises(ValueError, match="0..1023"):
        SnowflakeGenerator(bad)


@pytest.mark.parametrize("bad", [True, "1", 1.0, None])
def test_worker_id_wrong_type(bad):
    with pytest.raises(TypeError):
        SnowflakeGenerator(bad)


@pytest.mark.parametrize("ok", [0, 1023])
def test_worker_id_bounds_accepted(ok):
    assert SnowflakeGenerator(ok, clock=FakeClock()).worker_id == ok


def test_new_ms_resets_sequence():
    clock = FakeClock()
    gen = SnowflakeGenerator(1, clock=clock)
    for _ in range(5):
        gen.next_id()
    clock.now += 1
    i = gen.next_id()
    assert snowflake_sequence(i) == 0
    assert snowflake_timestamp_ms(i) == T0 + 1


def test_sequence_overflow_borrows_next_ms():
    clock = FakeClock()
    gen = SnowflakeGenerator(7, clock=clock)
    ids = [gen.next_id() for _ in range(MAX_SEQUENCE + 1)]
    assert snowflake_sequence(ids[-1]) == MAX_SEQUENCE
    assert snowflake_timestamp_ms(ids[-1]) == T0
    overflow = gen.next_id()
    assert snowflake_timestamp_ms(overflow) == T0 + 1
    assert snowflake_sequence(overflow) == 0
    # the wall clock catching up to the borrowed ms continues the sequence, no duplicate
    clock.now = T0 + 1
    after = gen.next_id()
    assert after == overflow + 1


def test_clock_step_back_keeps_logical_clock():
    clock = FakeClock()
    gen = SnowflakeGenerator(2, clock=clock)
    first = gen.next_id()
    clock.now -= 10_000  # NTP steps the clock back 10 s
    later = [gen.next_id() for _ in range(3)]
    assert all(snowflake_timestamp_ms(i) == T0 for i in later)
    assert [snowflake_sequence(i) for i in later] == [1, 2, 3]
    assert first < later[0] < later[1] < later[2]


def test_clock_back_with_overflow_borrows_ms():
    clock = FakeClock()
    gen = SnowflakeGenerator(2, clock=clock)
    gen.next_id()
    clock.now -= 5
    ids = [gen.next_id() for _ in range(MAX_SEQUENCE + 2)]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert snowflake_timestamp_ms(ids[-1]) == T0 + 1


def test_clock_before_epoch_on_first_use_raises():
    gen = SnowflakeGenerator(0, epoch_ms=10_000, clock=FakeClock(9_999))
    with pytest.raises(ValueError, match="before the epoch"):
        gen.next_id()


def test_clock_before_epoch_after_first_id_continues_logically():
    clock = FakeClock(10_005)
    gen = SnowflakeGenerator(0, epoch_ms=10_000, clock=clock)
    a = gen.next_id()
    clock.now = 5
    b = gen.next_id()
    assert b == a + 1


def test_timestamp_exhaustion_raises():
    clock = FakeClock(DEFAULT_EPOCH_MS + MAX_TIMESTAMP)
    gen = SnowflakeGenerator(1023, clock=clock)
    last = None
    for _ in range(MAX_SEQUENCE + 1):
        last = gen.next_id()
    assert last == MAX_ID
    with pytest.raises(OverflowError):
        gen.next_id()


def test_real_clock_ids_are_near_now():
    gen = SnowflakeGenerator(5)
    before = time.time_ns() // 1_000_000
    i = gen.next_id()
    after = time.time_ns() // 1_000_000
    assert before <= snowflake_timestamp_ms(i) <= after
    assert 0 < i <= MAX_ID


def test_thread_safety_unique_and_per_thread_increasing():
    gen = SnowflakeGenerator(9, clock=FakeClock())  # a stalled clock maximises contention on the sequence
    results: list[list[int]] = [[] for _ in range(8)]

    def work(out: list[int]) -> None:
        for _ in range(3000):
            out.append(gen.next_id())

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for r in results for i in r]
    assert len(set(everything)) == len(everything) == 24_000
    for r in results:
        assert r == sorted(r)
    # the stalled clock forced borrowing: exactly the first 24,000 (ms, sequence) slots were used
    base = T0 - DEFAULT_EPOCH_MS
    expected = {((base + n // 4096) << 22) | (9 << 12) | (n % 4096) for n in range(24_000)}
    assert set(everything) == expected


clock_steps = st.lists(
    st.one_of(
        st.just(0),  # stall
        st.integers(-5_000, -1),  # step back
        st.integers(1, 3),  # normal progress
        st.integers(1_000, 10**7),  # jump ahead
    ),
    min_size=1,
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(steps=clock_steps, per_step=st.integers(1, 50), worker=st.integers(0, 1023))
def test_ids_strictly_increase_under_adversarial_clock(steps, per_step, worker):
    clock = FakeClock()
    gen = SnowflakeGenerator(worker, clock=clock)
    ids = []
    max_seen = clock.now
    for step in steps:
        clock.now += step
        max_seen = max(max_seen, clock.now)
        for _ in range(per_step):
            i = gen.next_id()
            ts = snowflake_timestamp_ms(i)
            # never behind the clock when the clock is ahead of everything seen
            if clock.now == max_seen:
                assert ts >= clock.now
            # never runs ahead by more than the ms borrowed for sequence overflow
            assert ts <= max_seen + len(ids) // (MAX_SEQUENCE + 1) + 1
            assert snowflake_worker(i) == worker
            ids.append(i)
    assert all(a < b for a, b in zip(ids, ids[1:]))


@settings(max_examples=50, deadline=None)
@given(steps=clock_steps, workers=st.sets(st.integers(0, 1023), min_size=2, max_size=4))
def test_distinct_workers_never_collide(steps, workers):
    gens = [SnowflakeGenerator(w, clock=clock) for w, clock in ((w, FakeClock()) for w in workers)]
    seen: set[int] = set()
    count = 0
    for step in steps:
        for g in gens:
            g._clock.now += step  # noqa: SLF001 - share the same adversarial schedule
            for _ in range(3):
                seen.add(g.next_id())
                count += 1
    assert len(seen) == count


@given(
    ms=st.integers(DEFAULT_EPOCH_MS, DEFAULT_EPOCH_MS + MAX_TIMESTAMP),
    worker=st.integers(0, 1023),
    seq=st.integers(0, MAX_SEQUENCE),
)
def test_min_and_max_id_for_time_bracket_ids_of_that_ms(ms, worker, seq):
    i = ((ms - DEFAULT_EPOCH_MS) << 22) | (worker << 12) | seq
    assert min_id_for_time(ms) <= i <= max_id_for_time(ms)
    if ms > DEFAULT_EPOCH_MS:
        assert max_id_for_time(ms - 1) < min_id_for_time(ms)
        assert max_id_for_time(ms - 1) + 1 == min_id_for_time(ms)
    if ms < DEFAULT_EPOCH_MS + MAX_TIMESTAMP:
        assert i < min_id_for_time(ms + 1)


def test_min_id_for_time_from_a_generator():
    clock = FakeClock()
    gen = SnowflakeGenerator(500, clock=clock)
    at_t0 = [gen.next_id() for _ in range(10)]
    clock.now += 1
    at_t1 = gen.next_id()
    assert all(i < min_id_for_time(T0 + 1) for i in at_t0)
    assert at_t1 >= min_id_for_time(T0 + 1)
    assert min_id_for_time(T0) == (T0 - DEFAULT_EPOCH_MS) << 22


def test_min_id_for_time_edges():
    assert min_id_for_time(DEFAULT_EPOCH_MS - 1) == 0
    assert min_id_for_time(0) == 0
    assert max_id_for_time(DEFAULT_EPOCH_MS - 1) == -1
    assert max_id_for_time(DEFAULT_EPOCH_MS + MAX_TIMESTAMP) == MAX_ID
    with pytest.raises(ValueError):
        min_id_for_time(DEFAULT_EPOCH_MS + MAX_TIMESTAMP + 1)


@pytest.mark.parametrize("bad", [-1, MAX_ID + 1])
def test_helpers_reject_out_of_range_ids(bad):
    with pytest.raises(ValueError):
        snowflake_worker(bad)
    with pytest.raises(ValueError):
        snowflake_timestamp_ms(bad)
