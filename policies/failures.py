"""What an error means for the stream: wait, skip the event, or stop the worker.

Every exception that reaches an agent is one of three kinds:

* ``TRANSIENT``: the store or broker is unreachable, slow or busy (connection refused,
  timeouts, unavailable replicas, overloaded, a leader moving). The same work will
  succeed later: retry it with capped backoff, nothing is skipped.
* ``PERMANENT``: this event can never be processed (a store refuses its data, a request
  the server calls invalid, a message too large, a bug that this input triggers).
  Retrying cannot help: the event is dead-lettered and the stream moves on.
* ``SYSTEMIC``: the worker itself is misconfigured or a schema is missing (a changelog
  topic whose partition count differs from its source, a missing table or topic, refused
  credentials). Every event would fail the same way, so dead-lettering would drain the
  log into the dead-letter topic: the worker stops, loudly, instead.

A run of one unexpected error on many events in a row is systemic too
(:class:`ErrorStreak`): bad input is varied; a bug or a broken store repeats itself.

Classification is by the exception's class names (``module.Class`` along its MRO), so
this module imports no driver and stays a pure function.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Iterable

TRANSIENT = "transient"
PERMANENT = "permanent"
SYSTEMIC = "systemic"

# Exact class names (``module.QualName``), checked along the MRO, first match wins per class.
_SYSTEMIC = {
    "faust.exceptions.PartitionsMismatch",
    "faust.exceptions.ImproperlyConfigured",
    "cassandra.AuthenticationFailed",
    "cassandra.Unauthorized",
    "cassandra.ConfigurationException",
    "cassandra.protocol.SyntaxException",
    "cassandra.protocol.UnauthorizedErrorMessage",
    "psycopg.ProgrammingError",  # undefined table/column/schema, syntax: our SQL or schema
    "psycopg.errors.InsufficientPrivilege",
    "psycopg.errors.InvalidCatalogName",
    "psycopg.errors.InvalidAuthorizationSpecification",
    "redis.exceptions.AuthenticationError",
    "redis.exceptions.NoPermissionError",
    "aiokafka.errors.UnknownTopicOrPartitionError",
    "aiokafka.errors.TopicAuthorizationFailedError",
    "aiokafka.errors.ClusterAuthorizationFailedError",
    "aiokafka.errors.InvalidTopicError",
    "policies.failures.SystemicFault",
}
_PERMANENT = {
    "psycopg.DataError",
    "psycopg.IntegrityError",
    "psycopg.InternalError",
    "cassandra.protocol.ServerError",
    "aiokafka.errors.MessageSizeTooLargeError",
    "aiokafka.errors.RecordTooLargeError",
    "aiokafka.errors.CorruptRecordException",
    "redis.exceptions.ResponseError",
    "redis.exceptions.DataError",
}
_TRANSIENT = {
    "builtins.OSError",  # ConnectionError, ConnectionRefusedError, socket errors
    "builtins.TimeoutError",
    "cassandra.OperationTimedOut",
    "cassandra.Timeout",  # ReadTimeout, WriteTimeout
    "cassandra.Unavailable",
    "cassandra.CoordinationFailure",  # ReadFailure, WriteFailure
    "cassandra.cluster.NoHostAvailable",
    "cassandra.protocol.OverloadedErrorMessage",
    "cassandra.protocol.IsBootstrappingErrorMessage",
    "cassandra.protocol.UnavailableErrorMessage",
    "cassandra.protocol.ReadTimeoutErrorMessage",
    "cassandra.protocol.WriteTimeoutErrorMessage",
    "psycopg.OperationalError",  # connection lost, admin shutdown, pool timeout
    "psycopg.errors.SerializationFailure",
    "psycopg.errors.DeadlockDetected",
    "redis.exceptions.ConnectionError",
    "redis.exceptions.TimeoutError",
    "redis.exceptions.BusyLoadingError",
    "redis.exceptions.TryAgainError",
    "redis.exceptions.ClusterDownError",
    # A Redis Cluster failing over: a slot answered by another node now (MOVED/ASK, a
    # ResponseError otherwise taken as permanent), a slot with no master yet, retries used up.
    "redis.exceptions.AskError",
    "redis.exceptions.SlotNotCoveredError",
    "redis.exceptions.ClusterError",
    "redis.exceptions.MasterDownError",
    "redis.exceptions.ReadOnlyError",
    "redis.exceptions.OutOfMemoryError",
    "aiokafka.errors.KafkaConnectionError",
    "aiokafka.errors.KafkaTimeoutError",
    "aiokafka.errors.RequestTimedOutError",
    "aiokafka.errors.NodeNotReadyError",
    "aiokafka.errors.NotLeaderForPartitionError",
    "aiokafka.errors.LeaderNotAvailableError",
    "aiokafka.errors.NotEnoughReplicasError",
    "aiokafka.errors.NotEnoughReplicasAfterAppendError",
    "aiokafka.errors.ProducerClosed",
}
# In the MRO of a subclass, a more specific name wins: psycopg.errors.UndefinedTable is a
# ProgrammingError (systemic), psycopg.errors.QueryCanceled an OperationalError (transient).


class SystemicFault(RuntimeError):
    """Raised (or classified) when the worker must stop: see the module docstring."""


def classify(exc: BaseException) -> str:
    """TRANSIENT, PERMANENT or SYSTEMIC for one exception; unknown errors are PERMANENT (a
    bug that this input triggers); a run of them is caught by :class:`ErrorStreak`."""
    if isinstance(exc, asyncio.CancelledError):
        raise TypeError("cancellation is not an error to classify")
    for cls in type(exc).__mro__:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in _SYSTEMIC:
            return SYSTEMIC
        if name in _PERMANENT:
            return PERMANENT
        if name in _TRANSIENT:
            return TRANSIENT
        if name.startswith("aiokafka.errors.") and getattr(exc, "retriable", False):
            return TRANSIENT
    if _cassandra_schema_missing(exc):
        return SYSTEMIC
    return PERMANENT


def _cassandra_schema_missing(exc: BaseException) -> bool:
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    if "cassandra.InvalidRequest" not in names:
        return False
    text = str(exc).lower()
    return "unconfigured table" in text or "does not exist" in text or "undefined column" in text


def signature(exc: BaseException) -> str:
    """What makes two errors "the same": the class and the first line of the message, with
    digits dropped (ids and offsets differ from event to event)."""
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__qualname__}: " + "".join("#" if ch.isdigit() else ch for ch in first[:200])


@dataclass
class ErrorStreak:
    """Counts events in a row that failed with the same unexpected (non-contract) error.

    ``failed`` returns True when the run reaches ``limit``: the worker should stop. Any
    success (``succeeded``) or a different error starts a new run.
    """

    limit: int
    current: str | None = None
    count: int = 0

    def failed(self, exc: BaseException) -> bool:
        sig = signature(exc)
        if sig == self.current:
            self.count += 1
        else:
            self.current, self.count = sig, 1
        return self.count >= self.limit

    def succeeded(self, events: int = 1) -> None:
        if events > 0:
            self.current, self.count = None, 0


def halves(items: list) -> Iterable[list]:
    """A failed batch is retried as two halves, in order, until the failing event stands alone."""
    mid = len(items) // 2
    return (items[:mid], items[mid:])
