"""``Settings.isolated`` and ``with_topic_prefix``: the namespaces tests and benchmarks run in on the shared servers."""
from __future__ import annotations

from pathlib import Path

from settings import Settings


def test_every_store_name_carries_the_namespace_and_tag(tmp_path: Path) -> None:
    s = Settings().isolated("it", "abc123", tmp_path)
    assert (s.topic_tweets, s.topic_follows, s.topic_activity, s.topic_deliveries, s.topic_dead_letters) == (
        "it-tweets-abc123", "it-follows-abc123", "it-activity-abc123", "it-deliveries-abc123", "it-dead-abc123")
    assert s.topic_partitions == 4
    assert s.cassandra_keyspace == s.postgres_schema == "it_abc123"
    assert s.redis_prefix == "it:abc123:"
    assert s.app_id == "it-abc123"
    assert s.faust_datadir == str(tmp_path / "faust")


def test_dashes_become_underscores_in_keyspace_and_schema(tmp_path: Path) -> None:
    s = Settings().isolated("bench-read", "t1", tmp_path)
    assert s.cassandra_keyspace == s.postgres_schema == "bench_read_t1"
    assert s.topic_tweets == "bench-read-tweets-t1"


def test_overrides_win_and_other_fields_are_kept(tmp_path: Path) -> None:
    base = Settings(celebrity_threshold=50, celebrity_hysteresis=5)
    s = base.isolated("it", "x", tmp_path, topic_partitions=8, postgres_schema="public", celebrity_hysteresis=2)
    assert (s.topic_partitions, s.postgres_schema, s.celebrity_threshold, s.celebrity_hysteresis) == (8, "public", 50, 2)
    assert s.kafka_bootstrap == base.kafka_bootstrap and s.redis_url == base.redis_url


def test_a_topic_prefix_moves_only_the_topics() -> None:
    base = Settings()
    s = base.with_topic_prefix("bench-x-", 8)
    assert (s.topic_tweets, s.topic_follows, s.topic_activity, s.topic_deliveries, s.topic_dead_letters) == (
        "bench-x-tweets", "bench-x-follows", "bench-x-user-activity", "bench-x-timeline-deliveries",
        "bench-x-dead-letters")
    assert s.topic_partitions == 8
    assert (s.cassandra_keyspace, s.postgres_schema, s.redis_prefix, s.app_id) == (
        base.cassandra_keyspace, base.postgres_schema, base.redis_prefix, base.app_id)


async def test_drop_namespace_refuses_the_service_own_names() -> None:
    import pytest

    from ops.schema import drop_namespace
    from settings import Settings

    with pytest.raises(ValueError, match="isolated namespaces"):
        await drop_namespace(Settings())
    with pytest.raises(ValueError):
        await drop_namespace(Settings().replace(topic_tweets="x"))  # keyspace, prefix, app id still real
