"""docs/events.md's kcat producer examples work against the real broker.

The `kcat -P` commands are taken verbatim from the ```sh blocks of docs/events.md and run
through the shell; only the topic (`-t tweets` -> a throw-away topic, so the real
forever-retained log gets no test events) and, if configured differently, the broker
address are substituted. The event is read back with aiokafka and must be on the
partition Kafka's default partitioner (murmur2) picks for the key, and decode under the
contract. kcat is not installed by this test: CI installs it (`apt-get install kcat`).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import settings as settings_module
from schemas.events import decode, from_dict
from tests.integration.post_fixtures import expected_partition, read_topic

pytestmark = pytest.mark.integration

DOC = Path(settings_module.__file__).resolve().parent / "docs" / "events.md"  # repo root
PARTITIONS = 8
DOC_BROKER = "127.0.0.1:9092"


def doc_kcat_producer_commands() -> list[str]:
    text = DOC.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if "kcat -P" in line]
    assert commands, "docs/events.md has no ```sh block with a `kcat -P` command"
    return commands


def test_doc_has_the_tweet_posted_example_first() -> None:
    first = doc_kcat_producer_commands()[0]
    assert "-t tweets" in first and "-K:" in first and "partitioner=murmur2_random" in first
    assert '"type":"tweet_posted"' in first


@pytest.mark.parametrize("index", range(len(doc_kcat_producer_commands())))
async def test_doc_kcat_command_produces_a_contract_event(services, index: int) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail(
            "kcat is not on PATH: install it with `apt-get install kcat` (Debian package kcat); "
            "this test checks the producer example of docs/events.md with the real tool"
        )
    command = doc_kcat_producer_commands()[index]
    doc_topic = re.search(r"-t (\S+)", command).group(1)  # type: ignore[union-attr]
    line = re.search(r"echo '([^']*)'", command).group(1)  # type: ignore[union-attr]
    key_text, _, value_text = line.partition(":")

    settings = services
    topic = f"it-doc-{doc_topic}-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, settings.topic_replication)])
        runnable = command.replace(f"-t {doc_topic}", f"-t {topic}").replace(
            f"-b {DOC_BROKER}", f"-b {settings.kafka_bootstrap}"
        )
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", runnable], capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, f"{runnable}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"

        records = await read_topic(settings, topic)
        assert len(records) == 1, records
        record = records[0]
        assert record.key == key_text.encode() == str(int(key_text)).encode()
        assert record.partition == expected_partition(record.key, PARTITIONS)
        event = decode(record.value)
        assert event == from_dict(json.loads(value_text))
        assert event.key == int(key_text)
    finally:
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
