"""The pipeline's consumer group: who owns which partitions, and removing a dead member.

A worker that dies without leaving (SIGKILL, out of memory, a lost machine) keeps its
partitions until the group coordinator has not heard from it for the session timeout
(``TL_BROKER_SESSION_TIMEOUT_S``). Whoever notices the death first - the supervisor that
restarts it (``ops/supervise.py``), or an operator - can remove its member at once
(``remove_members``, a LeaveGroup on its behalf): the group rebalances now and the
surviving workers take its partitions over.

Members are found by name: a worker started with ``TL_WORKER_NAME=<name>`` has the Kafka
client id ``<app id>-<name>``, and with static membership its member id starts with
``<name>-``.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import for_code
from aiokafka.protocol.group import LeaveGroupRequest

from settings import Settings


@dataclass
class Member:
    member_id: str
    client_id: str
    partitions: dict[str, set[int]] = field(default_factory=dict)  # topic -> partitions

    def name(self, settings: Settings) -> str | None:
        """The worker's ``TL_WORKER_NAME``, when it has one."""
        prefix = f"{settings.worker_group}-"
        if self.client_id.startswith(prefix):
            return self.client_id[len(prefix):]
        return None


@dataclass
class Group:
    state: str
    members: list[Member]

    def owned(self, topic: str) -> dict[str, set[int]]:
        """member id -> partitions of ``topic``."""
        return {m.member_id: set(m.partitions.get(topic, ())) for m in self.members}


async def describe(settings: Settings) -> Group:
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([settings.worker_group])
        (group,) = response.groups
        _error, _group_id, state, _ptype, _protocol, raw_members = group[:6]
        members = []
        for raw in raw_members:
            member_id, client_id, _host, _metadata, assignment = raw[:5]
            parts: dict[str, set[int]] = {}
            if assignment:
                for topic, partitions in ConsumerProtocolMemberAssignment.decode(assignment).assignment:
                    parts.setdefault(topic, set()).update(partitions)
            members.append(Member(member_id, client_id, parts))
        return Group(state, members)
    finally:
        await admin.close()


async def remove_members(settings: Settings, member_ids: list[str]) -> dict[str, str]:
    """Remove members from the group now (LeaveGroup on their behalf); returns member id ->
    "removed" or the error. The group rebalances; a worker still alive and removed this way
    simply joins again."""
    if not member_ids:
        return {}
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    out: dict[str, str] = {}
    try:
        node = await admin.find_coordinator(settings.worker_group)
        for member_id in member_ids:
            response = await admin._send_request(  # noqa: SLF001 - no public LeaveGroup call
                LeaveGroupRequest(settings.worker_group, member_id), node)
            code = response.error_code
            out[member_id] = "removed" if code == 0 else repr(for_code(code))
        return out
    finally:
        await admin.close()


def member_ids_of(settings: Settings, group: Group, name: str) -> list[str]:
    return [m.member_id for m in group.members if m.name(settings) == name or m.member_id.startswith(f"{name}-")]


async def remove_worker(settings: Settings, name: str) -> dict[str, str]:
    """Remove the member(s) of the worker named ``name`` (``TL_WORKER_NAME``)."""
    return await remove_members(settings, member_ids_of(settings, await describe(settings), name))


class GroupWatch:
    """A supervisor's view of the group: an admin connection kept open and the member ids of
    named workers looked up every ``interval`` seconds, so that removing a dead worker's
    member is a single request to the coordinator (about 2 s less than connecting and
    describing the group after the death, on a busy machine)."""

    def __init__(self, settings: Settings, *, interval: float = 2.0) -> None:
        self.settings = settings
        self.interval = interval
        self.members: dict[str, list[str]] = {}  # worker name -> member ids
        self._admin: AIOKafkaAdminClient | None = None
        self._coordinator: int | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> "GroupWatch":
        self._task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close()

    async def _close(self) -> None:
        admin, self._admin, self._coordinator = self._admin, None, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def _connect(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self.settings.kafka_kwargs(), request_timeout_ms=5000)
            await admin.start()
            self._admin = admin
        if self._coordinator is None:
            self._coordinator = await self._admin.find_coordinator(self.settings.worker_group)
        return self._admin

    async def refresh(self) -> None:
        admin = await self._connect()
        (response,) = await admin.describe_consumer_groups([self.settings.worker_group],
                                                           group_coordinator_id=self._coordinator)
        (raw_group,) = response.groups
        members: dict[str, list[str]] = {}
        for raw in raw_group[5]:
            member = Member(raw[0], raw[1])
            name = member.name(self.settings) or member.member_id.split("-", 1)[0]
            members.setdefault(name, []).append(member.member_id)
        self.members = members

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.refresh(), 10.0)
            except Exception:  # noqa: BLE001 - Kafka away or the coordinator moved: reconnect
                await self._close()
            await asyncio.sleep(self.interval)

    async def remove(self, name: str) -> dict[str, str]:
        """Remove the worker's member(s): the ids known from the last look, else looked up now."""
        ids = list(self.members.get(name, ()))
        try:
            admin = await self._connect()
            if not ids:
                await self.refresh()
                ids = list(self.members.get(name, ()))
            out = {}
            for member_id in ids:
                response = await admin._send_request(  # noqa: SLF001 - no public LeaveGroup call
                    LeaveGroupRequest(self.settings.worker_group, member_id), self._coordinator)
                code = response.error_code
                out[member_id] = "removed" if code == 0 else repr(for_code(code))
            return out
        except Exception:
            await self._close()
            raise
