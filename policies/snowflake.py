"""Snowflake ids: 41-bit ms timestamp | 10-bit worker id | 12-bit sequence.

Layout of a 63-bit non-negative id (the sign bit is always 0)::

    (ms_since_epoch << 22) | (worker_id << 12) | sequence

Ids from one generator are unique and strictly increasing. Ids from generators
with distinct worker ids never collide. Id order is creation-time order up to
clock skew between workers, so ids double as time cursors (``min_id_for_time``).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, NamedTuple

DEFAULT_EPOCH_MS = 1288834974657  # Twitter's epoch, 2010-11-04T01:42:54.657Z

TIMESTAMP_BITS = 41
WORKER_BITS = 10
SEQUENCE_BITS = 12

WORKER_SHIFT = SEQUENCE_BITS
TIMESTAMP_SHIFT = SEQUENCE_BITS + WORKER_BITS

MAX_WORKER_ID = (1 << WORKER_BITS) - 1  # 1023
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1  # 4095
MAX_TIMESTAMP = (1 << TIMESTAMP_BITS) - 1  # ms since epoch, ~69.7 years
MAX_ID = (1 << (TIMESTAMP_BITS + WORKER_BITS + SEQUENCE_BITS)) - 1  # 2**63 - 1


class SnowflakeParts(NamedTuple):
    timestamp_ms: int  # absolute epoch ms (the custom epoch already added back)
    worker_id: int
    sequence: int


def wall_clock_ms() -> int:
    """Unix time in milliseconds (the default clock)."""
    return time.time_ns() // 1_000_000


def _check_worker(worker_id: int) -> int:
    if isinstance(worker_id, bool) or not isinstance(worker_id, int):
        raise TypeError(f"worker_id must be an int, got {type(worker_id).__name__}")
    if not 0 <= worker_id <= MAX_WORKER_ID:
        raise ValueError(f"worker_id must be in 0..{MAX_WORKER_ID}, got {worker_id}")
    return worker_id


def _check_id(snowflake_id: int) -> int:
    if isinstance(snowflake_id, bool) or not isinstance(snowflake_id, int):
        raise TypeError(f"snowflake id must be an int, got {type(snowflake_id).__name__}")
    if not 0 <= snowflake_id <= MAX_ID:
        raise ValueError(f"snowflake id must be in 0..{MAX_ID}, got {snowflake_id}")
    return snowflake_id


class IdWindowClosed(RuntimeError):
    """The next id's timestamp (``ms``, Unix ms) would not be below the caller's
    ``before_ms`` limit."""

    def __init__(self, ms: int, before_ms: int) -> None:
        super().__init__(f"the next id would be at {ms} ms, not before {before_ms} ms")
        self.ms = ms
        self.before_ms = before_ms


class SnowflakeGenerator:
    """Thread-safe generator of unique, strictly increasing snowflake ids.

    The generator keeps a logical clock ``last_ms`` (ms since the epoch):

    * clock ahead of ``last_ms``: adopt it, sequence restarts at 0;
    * clock equal to or *behind* ``last_ms`` (stall, or the wall clock stepped
      back): stay on ``last_ms`` and increment the sequence;
    * sequence exhausted (4096 ids in one ms): borrow the next ms
      (``last_ms += 1``) instead of blocking. The logical clock then runs ahead
      of the wall clock by at most the borrowed ms, and the wall clock catches up.

    So an id is never smaller than or equal to an earlier one, whatever the clock does.

    Two fences bound the ids of one holder of a worker id (``post.worker_id``):
    :meth:`advance_past` (no id at or below a millisecond: the previous holder's) and
    ``next_id(before_ms=...)`` (no id at or after a millisecond: where the lease ends).
    """

    __slots__ = ("_worker_id", "_epoch_ms", "_clock", "_last_ms", "_sequence", "_lock")

    def __init__(
        self,
        worker_id: int,
        epoch_ms: int = DEFAULT_EPOCH_MS,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._worker_id = _check_worker(worker_id)
        if isinstance(epoch_ms, bool) or not isinstance(epoch_ms, int) or epoch_ms < 0:
            raise ValueError(f"epoch_ms must be a non-negative int, got {epoch_ms!r}")
        self._epoch_ms = epoch_ms
        self._clock = clock
        self._last_ms = -1  # ms since epoch of the last id; -1 = none yet
        self._sequence = 0
        self._lock = threading.Lock()

    @property
    def worker_id(self) -> int:
        return self._worker_id

    @property
    def epoch_ms(self) -> int:
        return self._epoch_ms

    @property
    def last_ms(self) -> int | None:
        """Absolute Unix ms of the last id issued (or of the :meth:`advance_past` floor);
        None before either."""
        return None if self._last_ms < 0 else self._last_ms + self._epoch_ms

    def advance_past(self, ms: int) -> None:
        """Never issue an id whose timestamp is at or below Unix ms ``ms`` (no-op if the
        generator is already past it)."""
        floor = ms - self._epoch_ms
        with self._lock:
            if floor >= self._last_ms:
                # The next id is at floor + 1 at the earliest: a clock at or behind the
                # floor finds the sequence exhausted and borrows the next millisecond.
                self._last_ms, self._sequence = floor, MAX_SEQUENCE

    def next_id(self, before_ms: int | None = None) -> int:
        """The next id; raises ValueError if the clock is before the epoch on first
        use, OverflowError once the 41-bit timestamp is exhausted, and
        :class:`IdWindowClosed` (issuing nothing, changing nothing) if the id's timestamp
        would be at or after Unix ms ``before_ms``."""
        with self._lock:
            now = int(self._clock()) - self._epoch_ms
            last, seq = self._last_ms, self._sequence
            if now > last:
                last, seq = now, 0
            elif seq < MAX_SEQUENCE:
                seq += 1
            else:
                last, seq = last + 1, 0  # borrow the next millisecond
            if last < 0:
                raise ValueError(
                    f"clock reads {now + self._epoch_ms} ms, before the epoch {self._epoch_ms}"
                )
            if last > MAX_TIMESTAMP:
                raise OverflowError("snowflake timestamp exhausted (41 bits since the epoch)")
            if before_ms is not None and last + self._epoch_ms >= before_ms:
                raise IdWindowClosed(last + self._epoch_ms, before_ms)
            self._last_ms, self._sequence = last, seq
            return (last << TIMESTAMP_SHIFT) | (self._worker_id << WORKER_SHIFT) | seq


def snowflake_timestamp_ms(snowflake_id: int, epoch_ms: int = DEFAULT_EPOCH_MS) -> int:
    """Absolute Unix ms at which the id was generated."""
    return (_check_id(snowflake_id) >> TIMESTAMP_SHIFT) + epoch_ms


def snowflake_worker(snowflake_id: int) -> int:
    return (_check_id(snowflake_id) >> WORKER_SHIFT) & MAX_WORKER_ID


def snowflake_sequence(snowflake_id: int) -> int:
    return _check_id(snowflake_id) & MAX_SEQUENCE


def parse_snowflake(snowflake_id: int, epoch_ms: int = DEFAULT_EPOCH_MS) -> SnowflakeParts:
    return SnowflakeParts(
        snowflake_timestamp_ms(snowflake_id, epoch_ms),
        snowflake_worker(snowflake_id),
        snowflake_sequence(snowflake_id),
    )


def _ms_since_epoch(ms: int, epoch_ms: int) -> int:
    offset = ms - epoch_ms
    if offset > MAX_TIMESTAMP:
        raise ValueError(f"{ms} ms is beyond the 41-bit range of epoch {epoch_ms}")
    return max(offset, 0)


def min_id_for_time(ms: int, epoch_ms: int = DEFAULT_EPOCH_MS) -> int:
    """The smallest id any worker can generate at Unix ms ``ms`` (0 before the epoch).

    ``id >= min_id_for_time(t)`` iff the id was generated at or after ``t``.
    """
    return _ms_since_epoch(ms, epoch_ms) << TIMESTAMP_SHIFT


def max_id_for_time(ms: int, epoch_ms: int = DEFAULT_EPOCH_MS) -> int:
    """The largest id any worker can generate at Unix ms ``ms`` (-1 before the epoch)."""
    if ms < epoch_ms:
        return -1
    return min_id_for_time(ms, epoch_ms) | ((1 << TIMESTAMP_SHIFT) - 1)
