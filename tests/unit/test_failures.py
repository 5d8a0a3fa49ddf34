"""Errors classified (transient / permanent / systemic), isolated, and bounded dead letters."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiokafka.errors as kafka_errors
import cassandra
import cassandra.cluster
import orjson
import psycopg.errors
import pytest
import redis.exceptions
from faust.exceptions import PartitionsMismatch

from agents.dead_letters import dead_letter_record
from agents.failures import Isolator, backoff_retry
from policies.failures import PERMANENT, SYSTEMIC, TRANSIENT, ErrorStreak, SystemicFault, classify


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "refused"), TimeoutError(), asyncio.TimeoutError(),
    cassandra.OperationTimedOut("t"), cassandra.cluster.NoHostAvailable("none", {}),
    cassandra.Unavailable("u"), cassandra.WriteTimeout("w", write_type=0), cassandra.ReadTimeout("r"),
    psycopg.OperationalError("connection lost"), psycopg.errors.AdminShutdown("bye"),
    redis.exceptions.ConnectionError("down"), redis.exceptions.BusyLoadingError("loading"),
    redis.exceptions.TimeoutError(), kafka_errors.KafkaConnectionError(), kafka_errors.KafkaTimeoutError(),
    kafka_errors.NotLeaderForPartitionError(), kafka_errors.RequestTimedOutError(),
])
def test_transient(exc):
    assert classify(exc) == TRANSIENT


@pytest.mark.parametrize("exc", [
    psycopg.errors.CharacterNotInRepertoire("invalid byte sequence for encoding UTF8: 0x00"),
    psycopg.errors.DatetimeFieldOverflow("out of range"), psycopg.errors.UniqueViolation("dup"),
    cassandra.InvalidRequest("Key length of 70000 is longer than maximum of 65535"),
    kafka_errors.MessageSizeTooLargeError(), redis.exceptions.ResponseError("WRONGTYPE"),
    ValueError("year 10000 is out of range"), KeyError("to"), TypeError("x"),
])
def test_permanent(exc):
    assert classify(exc) == PERMANENT


@pytest.mark.parametrize("exc", [
    PartitionsMismatch("changelog has 8 partitions, source 4"),
    psycopg.errors.UndefinedTable('relation "tweets" does not exist'),
    psycopg.errors.InvalidSchemaName("no schema"), psycopg.errors.InsufficientPrivilege("no"),
    cassandra.InvalidRequest("unconfigured table user_timeline"),
    cassandra.InvalidRequest("Keyspace 'timeline' does not exist"),
    cassandra.AuthenticationFailed("no"), redis.exceptions.AuthenticationError("no"),
    kafka_errors.UnknownTopicOrPartitionError(), SystemicFault("x"),
])
def test_systemic(exc):
    assert classify(exc) == SYSTEMIC


def test_a_run_of_the_same_error_is_systemic_and_a_success_ends_the_run():
    streak = ErrorStreak(3)
    assert not streak.failed(KeyError(1)) and not streak.failed(KeyError(2))  # digits do not matter
    streak.succeeded()
    assert not streak.failed(KeyError(3)) and not streak.failed(KeyError(4))
    assert not streak.failed(ValueError("other"))  # another error starts a new run
    assert not streak.failed(ValueError("other")) and streak.failed(ValueError("other"))


async def test_backoff_retry_retries_transient_and_raises_the_rest():
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "refused")
        return "ok"

    assert await backoff_retry("x", flaky, max_delay=0.01) == "ok" and len(calls) == 3

    async def refused():
        calls.append(1)
        raise psycopg.errors.CharacterNotInRepertoire("NUL")

    calls.clear()
    with pytest.raises(psycopg.DataError):
        await backoff_retry("x", refused)
    assert len(calls) == 1


async def test_isolator_dead_letters_only_the_event_a_store_refuses():
    processed: list[int] = []
    dead: list[tuple[int, str]] = []

    async def process(events):
        if 13 in events:
            raise psycopg.errors.CharacterNotInRepertoire("invalid byte sequence for encoding UTF8: 0x00")
        processed.extend(events)

    async def dead_letter(event, reason):
        dead.append((event, reason))

    await Isolator("projection", 20).run(list(range(1, 30)), process, dead_letter)
    assert processed == [e for e in range(1, 30) if e != 13]  # in log order
    assert [e for e, _ in dead] == [13]
    assert dead[0][1].startswith("refused by a store: CharacterNotInRepertoire")


async def test_isolator_stops_on_systemic_errors_without_dead_lettering():
    dead = []

    async def process(events):
        raise PartitionsMismatch("changelog topic has 8 partitions, its source 4")

    async def dead_letter(event, reason):
        dead.append(event)

    with pytest.raises(SystemicFault, match="PartitionsMismatch"):
        await Isolator("deliver", 20).run([1, 2, 3], process, dead_letter)
    assert dead == []


async def test_isolator_stops_when_every_event_fails_the_same_way():
    dead = []

    async def process(events):
        raise KeyError("a bug that every event meets")

    async def dead_letter(event, reason):
        dead.append(event)

    with pytest.raises(SystemicFault, match="5 events in a row"):
        await Isolator("fanout", 5).run(list(range(100)), process, dead_letter)
    assert len(dead) == 4  # the first four were dead-lettered, the fifth stopped the worker


def test_dead_letter_record_is_bounded_whatever_the_input():
    value = bytes(range(32)) * 4500  # 144,000 bytes of control characters
    event = SimpleNamespace(message=SimpleNamespace(topic="tweets", partition=3, offset=9, key=b"k" * 100_000,
                                                     value=value))
    record = dead_letter_record(event, "r" * 100_000, "fanout")
    assert len(record) < 8 * 1024
    body = orjson.loads(record)
    assert body["value_len"] == len(value) and body["value_truncated"] is True
    assert body["key_len"] == 100_000 and len(body["key"]) == 128
    import hashlib
    assert body["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert (body["topic"], body["partition"], body["offset"]) == ("tweets", 3, 9)


def test_dead_letter_record_of_a_tombstone():
    event = SimpleNamespace(message=SimpleNamespace(topic="follows", partition=0, offset=1, key=None, value=None))
    body = orjson.loads(dead_letter_record(event, "message has no value (tombstone)", "fanout"))
    assert body["value_len"] is None and body["value_head"] is None and body["key"] is None
