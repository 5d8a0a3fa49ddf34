"""Snowflake worker-id leases: the arithmetic, without I/O (``post.leases`` does the SQL,
``post.worker_id`` holds the lease).

A lease is a row of PostgreSQL's ``snowflake_worker_leases`` held by one process. Every
time is PostgreSQL's clock (``now()``) except the holder's own deadline, which is on its
monotonic clock. Three rules keep two processes from ever issuing the same id:

1. **Trust ends before the row does.** A renewal sent at monotonic ``t`` that succeeds
   moves the row's ``expires_at`` to at least PostgreSQL's ``now() + ttl``, and that
   ``now()`` is after ``t``. So the holder trusts its lease until ``t + ttl - margin``
   (:func:`trusted_until`), ``margin`` before anyone can take the row over.
2. **The holder's ids stay below the row's expiry.** An id's timestamp must be below the
   ``expires_at`` PostgreSQL last answered (:meth:`Grant.refusal`); ``expires_at`` never
   moves back while the lease is held, so every id of a lease generation is below the
   row's final ``expires_at``, whatever the holder's wall clock says.
3. **A new holder starts above it.** Taking the row over (only once ``expires_at`` has
   passed) records that final ``expires_at`` as ``issue_after``; the new holder issues
   ids whose timestamps are above it (``SnowflakeGenerator.advance_past``).

Rules 2 and 3 make the ids of successive generations of one worker id disjoint ranges of
timestamps even if the two hosts' wall clocks disagree by minutes, a process pauses for
longer than the TTL, or a renewal's answer arrives late; rule 1 makes a holder that cannot
renew stop before another process can take its number.
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_TTL_S = 1.0


@dataclass(frozen=True)
class LeaseTiming:
    """How long a lease lasts, how often it is renewed and how early its holder stops
    trusting it: by default 60 s, every 20 s, 10 s early."""

    ttl_s: float = 60.0
    renew_every_s: float = 20.0
    margin_s: float = 10.0

    def __post_init__(self) -> None:
        if self.ttl_s < MIN_TTL_S:
            raise ValueError(f"a worker-id lease lasts at least {MIN_TTL_S:g} s, not {self.ttl_s:g}")
        if not 0 < self.margin_s < self.ttl_s:
            raise ValueError("the safety margin must be in (0, ttl)")
        if not 0 < self.renew_every_s < self.ttl_s - self.margin_s:
            raise ValueError("a lease must be renewed (renew_every_s) before its holder stops trusting it "
                             "(ttl_s - margin_s)")

    @classmethod
    def for_ttl(cls, ttl_s: float) -> "LeaseTiming":
        """Renew every third of the TTL, stop trusting a sixth of it early (60 s -> 20 s, 10 s)."""
        return cls(ttl_s=ttl_s, renew_every_s=ttl_s / 3, margin_s=ttl_s / 6)

    @property
    def trusted_s(self) -> float:
        return self.ttl_s - self.margin_s

    def retry_every_s(self) -> float:
        """How soon a failed renewal or take is tried again: often enough for a few tries
        before the lease stops being trusted."""
        return min(2.0, self.renew_every_s / 2)


def trusted_until(sent_at: float, timing: LeaseTiming) -> float:
    """Monotonic instant until which a lease that PostgreSQL granted or renewed, for a
    statement sent at monotonic ``sent_at``, may be used (rule 1)."""
    return sent_at + timing.trusted_s


@dataclass(frozen=True)
class Grant:
    """One answer of PostgreSQL to a take or a renewal. Times are Unix ms on its clock."""

    worker_id: int
    epoch: int  # the lease's generation: +1 each time the worker id changes hands
    issue_after_ms: int  # ids of this generation have timestamps above this (rule 3)
    expires_at_ms: int  # ... and below this (rule 2); others may take the row after it
    db_now_ms: int  # PostgreSQL's now() when it answered

    def refusal(self, id_ms: int) -> str | None:
        """Why an id with timestamp ``id_ms`` must not be issued under this grant (None:
        it may)."""
        if id_ms <= self.issue_after_ms:
            return (f"its timestamp {id_ms} ms is not after {self.issue_after_ms} ms, when the previous "
                    f"holder of worker id {self.worker_id} stopped")
        if id_ms >= self.expires_at_ms:
            return (f"its timestamp {id_ms} ms is not before {self.expires_at_ms} ms, when the lease on "
                    f"worker id {self.worker_id} ends by PostgreSQL's clock (is this host's clock ahead "
                    f"of PostgreSQL's?)")
        return None

    def renewed(self, later: "Grant") -> "Grant":
        """The grant after a renewal answered ``later``: the expiry never moves back."""
        if (later.worker_id, later.epoch) != (self.worker_id, self.epoch):
            raise ValueError("a renewal answers for the same worker id and generation")
        return Grant(self.worker_id, self.epoch, self.issue_after_ms,
                     max(self.expires_at_ms, later.expires_at_ms), later.db_now_ms)


@dataclass(frozen=True)
class Held:
    """A lease as its holder sees it: the last grant and the monotonic deadline."""

    grant: Grant
    trusted_until: float

    def refusal(self, now: float) -> str | None:
        """Why no id may be issued at monotonic ``now`` (None: ids may be issued)."""
        if now >= self.trusted_until:
            return (f"the lease on worker id {self.grant.worker_id} was not renewed in time "
                    f"(trusted until {now - self.trusted_until:.1f} s ago)")
        return None
