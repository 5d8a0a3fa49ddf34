"""Kafka clients' credentials (one function for every client) and the ACL plan of a namespace."""
from __future__ import annotations

import pytest

from faust_app import broker_credentials
from ops.kafka_acls import OPERATIONS, PATTERN_TYPES, RESOURCE_TYPES
from ops.schema import min_insync_replicas, topic_specs
from policies.kafka_access import AclBinding, namespace_bindings, producer_bindings
from settings import Settings

SASL = dict(kafka_security_protocol="SASL_PLAINTEXT", kafka_username="post", kafka_password="s3cret")


def test_plaintext_clients_get_only_the_bootstrap_list():
    settings = Settings(kafka_bootstrap="a:1,b:2,c:3")
    assert settings.kafka_kwargs() == {"bootstrap_servers": "a:1,b:2,c:3", "security_protocol": "PLAINTEXT"}
    assert broker_credentials(settings.kafka_kwargs()) is None


def test_sasl_clients_get_their_principal_and_faust_the_same():
    settings = Settings(**SASL)
    kwargs = settings.kafka_kwargs()
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == \
        ("SCRAM-SHA-512", "post", "s3cret")
    faust = broker_credentials(kwargs)
    assert (faust.protocol.value, faust.mechanism.value, faust.username, faust.password) == \
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", "post", "s3cret")
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize("bad", [
    dict(kafka_security_protocol="SSL"),
    dict(SASL, kafka_password=""),
    dict(SASL, kafka_username=""),
    dict(SASL, kafka_sasl_mechanism="GSSAPI"),
    dict(topic_replication=0),
])
def test_kafka_security_settings_are_checked(bad):
    with pytest.raises(ValueError):
        Settings(**bad)


def test_topics_keep_a_majority_of_replicas_in_sync():
    assert [min_insync_replicas(n) for n in (1, 2, 3, 5)] == [1, 2, 2, 3]
    specs = topic_specs(Settings(topic_replication=3))
    assert {s.configs["min.insync.replicas"] for s in specs} == {"2"}
    assert {s.configs["min.insync.replicas"] for s in topic_specs(Settings())} == {"1"}


def allowed(bindings: list[AclBinding], user: str) -> set[tuple[str, str, str, str]]:
    return {(b.resource_type, b.name, b.pattern, b.operation) for b in bindings if b.principal == f"User:{user}"}


def test_only_producers_write_the_source_topics_and_only_workers_the_internal_ones():
    s = Settings().isolated("it", "x", "/tmp/x")
    bindings = namespace_bindings(s)
    sources = {s.topic_tweets, s.topic_follows, s.topic_activity}
    writes = {(b.principal, b.name) for b in bindings if b.operation in ("write", "create")}
    assert {p for p, name in writes if name in sources} == {"User:post", "User:query"}
    assert {name for p, name in writes if p == "User:query"} == {s.topic_activity}
    assert {name for p, name in writes if p == "User:post"} == sources
    assert {name for p, name in writes if p == "User:worker"} == {s.topic_deliveries, s.topic_dead_letters,
                                                                   f"{s.app_id}-"}
    assert allowed(bindings, "post") == {("topic", t, "literal", "write") for t in sources}
    worker = allowed(bindings, "worker")
    assert {("topic", t, "literal", "read") for t in sources} <= worker
    assert ("group", s.app_id, "literal", "read") in worker
    assert ("topic", f"{s.app_id}-", "prefixed", "create") in worker
    # Every binding is expressible in Kafka's protocol codes.
    assert all(b.resource_type in RESOURCE_TYPES and b.pattern in PATTERN_TYPES and b.operation in OPERATIONS
               for b in bindings)


def test_roles_can_be_other_principals_and_operators_name_producers():
    s = Settings()
    bindings = namespace_bindings(s, {"post": "post-eu"})
    assert allowed(bindings, "post") == set()
    assert ("topic", s.topic_tweets, "literal", "write") in allowed(bindings, "post-eu")
    assert allowed(producer_bindings("kcat-ops", [s.topic_tweets]), "kcat-ops") == {
        ("topic", s.topic_tweets, "literal", "write")}
