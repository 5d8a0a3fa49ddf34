"""The unit suite's guard against the real servers (tests/unit/conftest.py) can fail."""
from __future__ import annotations

import asyncio
import socket

import pytest

from ops.schema import kafka_address
from settings import get_settings
from tests.unit.agent_doubles import UNIT_APP_ID, UNREACHABLE_KAFKA, app


async def test_a_connection_to_the_real_broker_is_refused_and_recorded(no_servers: list) -> None:
    host, port = kafka_address(get_settings())
    with pytest.raises(ConnectionRefusedError, match="must not reach the real servers"):
        await asyncio.open_connection(host, port)
    with socket.socket() as sock:
        assert sock.connect_ex((host, port)) != 0
    assert no_servers == [(host, port), (host, port)]
    no_servers.clear()  # recorded: the fixture would fail this test in its teardown


def test_the_unit_faust_app_has_its_own_id_and_no_broker() -> None:
    assert app.conf.id == UNIT_APP_ID != get_settings().app_id
    assert [str(url) for url in app.conf.broker] == [f"kafka://{UNREACHABLE_KAFKA}"]
    from tables.graph import recipients

    assert recipients.changelog_topic.get_topic_name() == f"{UNIT_APP_ID}-recipients-changelog"
