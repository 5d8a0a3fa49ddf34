"""Pure decisions for a Redis Cluster (no I/O): hash slots, the cluster's view of its nodes,
and how many replicas must hold a write before a batch counts as done.

* :func:`user_tag` / :func:`tagged`: a user's cached keys carry the hash tag ``{<user>}``, so
  one script or transaction on them touches one slot (``docs/architecture.md``).
* :func:`group_by_slot`: the keys of one call that touches many users or tweets, grouped by
  slot, for one call per slot (or per node) in cluster mode.
* :func:`parse_nodes`: ``CLUSTER NODES`` as :class:`NodeInfo` rows (who is master, of which
  slots, who replicates whom, who failed).
* :func:`required_acks`: how many replicas a master's writes must reach (``WAIT``) before the
  worker acknowledges the batch (``docs/reliability.md``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable, TypeVar

from redis.crc import key_slot

K = TypeVar("K", bound=Hashable)


def tagged(prefix: str, kind: str, tag: int | str) -> str:
    """``<prefix><kind>:{<tag>}``: every key of one tag is in the slot of ``tag``."""
    return f"{prefix}{kind}:{{{tag}}}"


def slot_of(key: str | bytes) -> int:
    """The hash slot of a key (its hash tag's, when it has one)."""
    return key_slot(key.encode() if isinstance(key, str) else key)


def group_by_slot(items: Iterable[K], key_of=lambda item: item) -> dict[int, list[K]]:
    """``items`` grouped by the slot of ``key_of(item)``, each group in the given order."""
    groups: dict[int, list[K]] = {}
    for item in items:
        groups.setdefault(slot_of(key_of(item)), []).append(item)
    return groups


@dataclass(frozen=True)
class NodeInfo:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # the master it replicates; None for a master
    slots: tuple[tuple[int, int], ...]  # (first, last) ranges owned (masters)

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        """Failed by the cluster's agreement (``fail``), not only suspected (``fail?``)."""
        return "fail" in self.flags

    @property
    def suspected(self) -> bool:
        return "fail?" in self.flags

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_nodes(text: str | bytes) -> list[NodeInfo]:
    """``CLUSTER NODES`` (``<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link>
    <slot>...``) as rows; slot migration markers (``[...]``) are ignored."""
    if isinstance(text, bytes):
        text = text.decode()
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@", 1)[0].split(",", 1)[0]
        host, _, port = address.rpartition(":")
        slots = []
        for spec in parts[8:]:
            if spec.startswith("["):
                continue
            first, _, last = spec.partition("-")
            slots.append((int(first), int(last or first)))
        rows.append(NodeInfo(parts[0], host, int(port) if port else 0, frozenset(parts[2].split(",")),
                             None if parts[3] == "-" else parts[3], tuple(slots)))
    return rows


def myself(nodes: Iterable[NodeInfo]) -> NodeInfo | None:
    return next((n for n in nodes if "myself" in n.flags), None)


def live_masters(nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    """Masters that own slots and are neither failed nor suspected, by port."""
    return sorted((n for n in nodes if n.is_master and n.slots and not n.failed and not n.suspected),
                  key=lambda n: n.port)


def slots_covered(nodes: Iterable[NodeInfo]) -> int:
    """How many of the 16384 slots a master that is not failed owns."""
    return sum(last - first + 1 for n in nodes if n.is_master and not n.failed for first, last in n.slots)


def required_acks(wanted: int, master_id: str, nodes: Iterable[NodeInfo]) -> int:
    """How many replicas must acknowledge (``WAIT``) a master's writes: ``wanted``, but no more
    than the master has replicas the cluster has not failed. A replica marked ``fail`` cannot
    be promoted, so it cannot bring back a state without the write; a replica that is only
    disconnected or suspected could be, and still counts (the batch waits, and is retried)."""
    replicas = sum(1 for n in nodes if n.master_id == master_id and not n.failed)
    return min(wanted, replicas)
