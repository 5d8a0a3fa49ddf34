"""The local Cassandra's durability mode is a setting (TL_CASSANDRA_COMMITLOG_SYNC)."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from localenv.cassandra_server import Cassandra
from settings import Settings


def _config(mode: str) -> dict:
    server = Cassandra(settings=dataclasses.replace(Settings(), cassandra_commitlog_sync=mode), state=Path("/nowhere"))
    return yaml.safe_load(server._yaml())


def test_batch_is_the_default_and_waits_for_the_disk():
    assert Settings().cassandra_commitlog_sync == "batch"
    conf = _config("batch")
    assert conf["commitlog_sync"] == "batch" and "commitlog_sync_period" not in conf


def test_periodic_syncs_every_ten_seconds():
    conf = _config("periodic")
    assert conf["commitlog_sync"] == "periodic" and conf["commitlog_sync_period"] == "10000ms"


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="batch, periodic"):
        _config("group")
