"""When the worker's Kafka fetches wait to gather records (pure; ``streams/fetch_gather.py`` applies it).

faust-streaming creates its consumer with ``fetch_min_bytes=1`` (and a 1.5 s long poll): every
fetch returns as soon as one record is there. Under a steady stream of small records, such as
tweets produced one at a time, the consumer then fetches as fast as round trips go, each fetch
returning a few records, and each fetch costs the worker's consumer thread encoding and decoding
for every partition it holds (aiokafka does it in Python) and the broker a request. Measured on
stage 1 at 373 tweets/s (bench/results/fetch-gather-20261205/README.md): the consumer thread
took 0.19 of a core; with fetches allowed to wait 20 ms for 1 MiB, 0.05. A wait of 100 ms (the
default since) also makes stage 1's batches fewer and fuller, and what each batch costs every
process (its store round trips, its delivery messages, stage 2's cycles) fell with them:
bench/results/fetch-gather-wait-20261205/README.md.

Waiting costs latency when little arrives (the idle lag goal is p50 < 30 ms over two hops), so
fetches gather only while records arrive faster than ``above_per_s``, and go back to returning
at once when the rate falls under half of that (hysteresis: a rate near the threshold does
not flip the setting every tick).
"""
from __future__ import annotations

from dataclasses import dataclass

#: faust-streaming's own consumer settings: return at the first record, long-poll 1.5 s.
AT_ONCE = (1500, 1)
#: What a gathering fetch waits for, unless ``wait_ms`` passes first.
GATHER_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FetchGather:
    """``wait_ms``: how long a fetch may wait for more records while gathering (0: never
    gathers); ``above_per_s``: the arrival rate (records/s) from which fetches gather."""

    wait_ms: int
    above_per_s: float

    def __post_init__(self) -> None:
        if self.wait_ms < 0 or self.above_per_s <= 0:
            raise ValueError(f"need wait_ms >= 0 and above_per_s > 0, got {self.wait_ms}, {self.above_per_s}")

    def gathering(self, was_gathering: bool, rate_per_s: float) -> bool:
        """Whether fetches gather, given the arrival rate just measured and the current state."""
        if self.wait_ms == 0:
            return False
        if was_gathering:
            return rate_per_s >= self.above_per_s / 2
        return rate_per_s >= self.above_per_s

    def params(self, gathering: bool) -> tuple[int, int]:
        """(fetch_max_wait_ms, fetch_min_bytes) for the consumer."""
        return (self.wait_ms, GATHER_MIN_BYTES) if gathering else AT_ONCE


def rate_per_s(count_before: int, count_now: int, seconds: float) -> float:
    """Records per second between two readings of a running count (0 for no time or a reset)."""
    if seconds <= 0 or count_now < count_before:
        return 0.0
    return (count_now - count_before) / seconds
