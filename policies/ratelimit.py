"""Token-bucket rate limiting, as pure math (the Redis side runs the same in Lua).

A bucket holds at most ``burst`` tokens and refills continuously at
``rate_per_s``. With stored state ``(tokens, updated_s)`` and a request costing
``cost`` at time ``now_s``::

    elapsed   = max(0, now_s - updated_s)              # a clock going back refills nothing
    tokens    = min(burst, tokens + elapsed * rate_per_s)
    updated_s = max(updated_s, now_s)
    if tokens + EPSILON >= cost:  allowed; tokens = max(0, tokens - cost); retry_after = 0
    else:                         denied;  tokens unchanged;              retry_after = (cost - tokens) / rate_per_s

A missing state is a full bucket (``tokens = burst``). A denied request still
stores the refilled state (harmless, keeps ``updated_s`` current). The state can
expire after ``full_refill_s(burst, rate_per_s)`` idle seconds: by then the
bucket is full again, which is what a missing state means. EPSILON absorbs float
rounding so that retrying exactly ``retry_after_s`` later succeeds.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

EPSILON = 1e-9


class BucketState(NamedTuple):
    tokens: float
    updated_s: float


class TakeResult(NamedTuple):
    allowed: bool
    state: BucketState
    retry_after_s: float  # 0.0 when allowed


def _check(burst: float, rate_per_s: float, cost: float) -> None:
    if not burst > 0:
        raise ValueError(f"burst must be > 0, got {burst}")
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    if not 0 <= cost <= burst:
        raise ValueError(f"cost must be in 0..burst ({burst}), got {cost}")


def take(
    state: BucketState | None,
    now_s: float,
    burst: float,
    rate_per_s: float,
    cost: float = 1,
) -> TakeResult:
    """Try to take ``cost`` tokens at ``now_s``; see the module docstring for the formula."""
    _check(burst, rate_per_s, cost)
    if state is None:
        tokens, updated = float(burst), float(now_s)
    else:
        tokens, updated = max(0.0, float(state.tokens)), float(state.updated_s)
        elapsed = max(0.0, now_s - updated)
        tokens = min(float(burst), tokens + elapsed * rate_per_s)
        updated = max(updated, float(now_s))
    if tokens + EPSILON >= cost:
        return TakeResult(True, BucketState(max(0.0, tokens - cost), updated), 0.0)
    return TakeResult(False, BucketState(tokens, updated), (cost - tokens) / rate_per_s)


def full_refill_s(burst: float, rate_per_s: float) -> int:
    """Whole seconds for an empty bucket to refill: a safe TTL for the stored state."""
    _check(burst, rate_per_s, 0)
    return math.ceil(burst / rate_per_s)


def retry_after_header(retry_after_s: float) -> int:
    """Seconds for an HTTP ``Retry-After`` header (rounded up, at least 1)."""
    return max(1, math.ceil(retry_after_s))


class LocalBuckets:
    """Token buckets in process memory, one per subject, for when the shared (Redis) buckets
    cannot be reached. At most ``max_subjects`` are kept; the least recently used is dropped
    first, and a dropped bucket is a full one (which errs towards admitting, never towards
    refusing someone who did nothing). ``now_s`` is passed in, so this stays pure."""

    def __init__(self, burst: float, rate_per_s: float, max_subjects: int = 10_000) -> None:
        _check(burst, rate_per_s, 0)
        if max_subjects < 1:
            raise ValueError(f"max_subjects must be >= 1, got {max_subjects}")
        self.burst = burst
        self.rate_per_s = rate_per_s
        self.max_subjects = max_subjects
        self._states: OrderedDict[str, BucketState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def take(self, subject: str, now_s: float, cost: float = 1) -> TakeResult:
        result = take(self._states.get(subject), now_s, self.burst, self.rate_per_s, cost)
        self._states[subject] = result.state
        self._states.move_to_end(subject)
        while len(self._states) > self.max_subjects:
            self._states.popitem(last=False)
        return result
