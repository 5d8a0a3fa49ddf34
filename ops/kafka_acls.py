"""Apply Kafka ACLs (``policies/kafka_access.py``'s bindings) with an admin principal.

CreateAcls is idempotent on the broker (an existing binding is not added twice), so applying
a namespace's bindings again is harmless. ``settings`` must carry a super user's (or an
``Alter`` on the cluster) credentials: ``Settings.kafka_kwargs()``.

    python -m ops.kafka_acls            # the default namespace's bindings, as TL_KAFKA_USERNAME
"""
from __future__ import annotations

import asyncio
import sys
from typing import Iterable

from policies.kafka_access import AclBinding, namespace_bindings
from settings import Settings, get_settings

# Kafka's protocol codes (org.apache.kafka.common.{resource.ResourceType, resource.PatternType,
# acl.AclOperation, acl.AclPermissionType}).
RESOURCE_TYPES = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
PATTERN_TYPES = {"literal": 3, "prefixed": 4}
OPERATIONS = {
    "all": 2, "read": 3, "write": 4, "create": 5, "delete": 6, "alter": 7, "describe": 8,
    "cluster_action": 9, "describe_configs": 10, "alter_configs": 11, "idempotent_write": 12,
}
ALLOW = 3
ANY_HOST = "*"


async def apply_acls(settings: Settings, bindings: Iterable[AclBinding], *, visible_within: float = 30.0) -> int:
    """Create every binding and wait until every broker enforces them (each answers
    DescribeAcls from its own authorizer, which learns new ACLs from the metadata log a moment
    after the controller accepted them). Returns how many were sent; raises on a refusal."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import for_code
    from aiokafka.protocol.admin import CreateAclsRequest

    bindings = list(bindings)
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs(), request_timeout_ms=30_000)
    await admin.start()
    try:
        async def one(b: AclBinding) -> None:
            request = CreateAclsRequest(RESOURCE_TYPES[b.resource_type], b.name, PATTERN_TYPES[b.pattern],
                                        b.principal, ANY_HOST, OPERATIONS[b.operation], ALLOW)
            response = await admin._send_request(request)  # noqa: SLF001 - aiokafka has no create_acls
            for code, message in response.creation_responses:
                if code != 0:
                    raise for_code(code)(f"creating ACL {b}: {message}")

        await asyncio.gather(*(one(b) for b in bindings))
        deadline = asyncio.get_running_loop().time() + visible_within
        for node in sorted(broker.nodeId for broker in admin._client.cluster.brokers()):  # noqa: SLF001
            while not set(bindings) <= set(await _describe(admin, node)):
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"ACLs not enforced by broker {node} within {visible_within:g}s")
                await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return len(bindings)


async def describe_acls(settings: Settings) -> list[AclBinding]:
    """Every ALLOW binding the cluster has (any resource, principal and host)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_kwargs(), request_timeout_ms=30_000)
    await admin.start()
    try:
        return await _describe(admin)
    finally:
        await admin.close()


async def _describe(admin, node: int | None = None) -> list[AclBinding]:
    from aiokafka.errors import for_code
    from aiokafka.protocol.admin import DescribeAclsRequest

    names = ({v: k for k, v in RESOURCE_TYPES.items()}, {v: k for k, v in PATTERN_TYPES.items()},
             {v: k for k, v in OPERATIONS.items()})
    # resource type ANY (1), any name, pattern ANY (1), any principal and host, operation
    # ANY (1), permission ALLOW.
    response = await admin._send_request(  # noqa: SLF001 - aiokafka has no describe_acls
        DescribeAclsRequest(1, None, 1, None, None, 1, ALLOW), node)
    if response.error_code != 0:
        raise for_code(response.error_code)(f"describing ACLs: {response.error_message}")
    out = []
    for resource_type, name, pattern, acls in response.resources:
        for principal, _host, operation, _permission in acls:
            out.append(AclBinding(principal, names[0].get(resource_type, str(resource_type)), name,
                                  names[1].get(pattern, str(pattern)), names[2].get(operation, str(operation))))
    return sorted(out)


def main() -> int:
    settings = get_settings()
    count = asyncio.run(apply_acls(settings, namespace_bindings(settings)))
    print(f"{count} ACL bindings applied on {settings.kafka_bootstrap}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
