"""Unit tests reach no server, and the agent tests share fixtures.

* ``no_servers`` (autouse): while a test of this folder runs, a Python socket that
  connects to a port of the real servers (Kafka, Cassandra, Redis, PostgreSQL, from the
  settings) is refused with an error naming the test, and the test fails in its teardown
  even if the code under test swallowed the error (a Kafka client retries quietly). A unit
  test that produced to the real broker once created the service's changelog topics with
  the wrong partition count. PostgreSQL's libpq opens its sockets in C and is not seen.
* The agent fixtures (``faust_test_app``, ``journal``, ``sent``, ``sinks``) live in
  :mod:`tests.unit.agent_doubles`, which also gives the unit tests' Faust app its own app
  id and an unreachable broker; importing them here makes them available to every module.
"""
from __future__ import annotations

import errno
import os
import socket
from typing import Any, Iterator

import pytest

from ops.schema import kafka_address, redis_address
from settings import Settings, get_settings
from tests.unit.agent_doubles import faust_test_app, journal, sent, sinks  # noqa: F401  (fixtures)


def server_ports(*settings: Settings) -> frozenset[int]:
    ports = set()
    for s in settings:
        ports |= {kafka_address(s)[1], s.cassandra_port, redis_address(s)[1]}
        ports.add(int(s.postgres_dsn.rsplit("@", 1)[-1].split("/", 1)[0].rpartition(":")[2] or 5432))
    return frozenset(ports)


SERVER_PORTS = server_ports(Settings(), get_settings())


class ServerConnection(ConnectionRefusedError):
    """What a unit test gets instead of a connection to a real server."""


@pytest.fixture(autouse=True)
def no_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    attempts: list[Any] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refused(address: Any) -> bool:
        if isinstance(address, tuple) and len(address) >= 2 and address[1] in SERVER_PORTS:
            attempts.append(address)
            return True
        return False

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if refused(address):
            raise ServerConnection(errno.ECONNREFUSED, f"unit test {os.environ.get('PYTEST_CURRENT_TEST')} "
                                   f"connected to {address}: unit tests must not reach the real servers")
        return connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        return errno.ECONNREFUSED if refused(address) else connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield attempts
    assert not attempts, f"this unit test tried to connect to the real servers at {attempts}"
