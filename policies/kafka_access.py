"""Who may do what on the Kafka log: the ACLs of a namespace, one binding per principal,
resource and operation (the cluster topology authenticates every client, ``docs/events.md``).

* the Post service and the producers an operator names write the source topics
  (``tweets``, ``follows``, ``user-activity``), and nothing else;
* the query service writes ``user-activity`` only (``user_active`` when a user reads);
* workers read the source topics in their consumer group (the app id), and read, write and
  create their own topics: deliveries, dead letters and Faust's ``<app id>-...`` changelogs
  and leader topic. They cannot write a source topic, so a worker cannot move an event a
  producer put on the wrong partition (``agents/outbox.reroute_if_misplaced``): on this
  topology the workers run with ``TL_MISPLACED_EVENTS=dead-letter`` and dead-letter it with
  the reason. Producers here must use Kafka's partitioner (the Post service does; kcat with
  ``partitioner=murmur2_random``).

Nobody else gets anything (the brokers run with ``allow.everyone.if.no.acl.found=false``);
the admin principal is a super user and needs no binding. Writing a topic lets a producer be
idempotent (Kafka 3's implied ``IdempotentWrite``). Pure: ``ops/kafka_acls.py`` applies them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from schemas import source_topics
from settings import Settings

# The principals of the service's processes, by role.
POST, QUERY, WORKER = "post", "query", "worker"
ROLES = (POST, QUERY, WORKER)


@dataclass(frozen=True, order=True)
class AclBinding:
    """ALLOW ``operation`` on a resource for ``principal`` (``User:<name>``), from any host."""

    principal: str
    resource_type: str  # topic | group | cluster
    name: str
    pattern: str  # literal | prefixed
    operation: str  # read | write | create | describe | describe_configs | ...


def _allow(user: str, resource_type: str, names: Iterable[str], operations: Iterable[str],
           pattern: str = "literal") -> list[AclBinding]:
    return [AclBinding(f"User:{user}", resource_type, name, pattern, op)
            for name in names for op in operations]


def producer_bindings(user: str, topics: Iterable[str]) -> list[AclBinding]:
    """A producer of events (the Post service, or one an operator names) on ``topics``."""
    return _allow(user, "topic", topics, ("write",))


def worker_bindings(user: str, settings: Settings) -> list[AclBinding]:
    own = (settings.topic_deliveries, settings.topic_dead_letters)
    return [
        *_allow(user, "topic", source_topics(settings), ("read",)),
        *_allow(user, "topic", own, ("read", "write", "create", "describe_configs")),
        # Faust's changelog, repartition and leader topics are named after the app id.
        *_allow(user, "topic", (f"{settings.app_id}-",), ("read", "write", "create", "describe_configs"),
                pattern="prefixed"),
        # The layout's consumer groups: the app id, or one per role (policies/worker_layout.py).
        *_allow(user, "group", tuple(settings.worker_groups()), ("read", "describe")),
    ]


def namespace_bindings(settings: Settings, users: dict[str, str] | None = None) -> list[AclBinding]:
    """Every binding the service's processes need on ``settings``' topics and group;
    ``users`` maps a role to its principal's name (default: the role's own name)."""
    users = {role: role for role in ROLES} | dict(users or {})
    return sorted({
        *producer_bindings(users[POST], source_topics(settings)),
        *producer_bindings(users[QUERY], (settings.topic_activity,)),
        *worker_bindings(users[WORKER], settings),
    })
