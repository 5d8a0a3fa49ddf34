"""The one place a Redis client is made, for one server or a Redis Cluster (``TL_REDIS_CLUSTER``).

* :func:`connect`: a ``redis.asyncio.Redis``, or a ``RedisCluster`` whose startup nodes are
  the ``host:port`` list of ``TL_REDIS_URL``. Every module that talks to Redis gets its
  client here, so the code is the same on both topologies.
* :func:`register_script`: a Lua script. On a cluster, a script queued in a pipeline is sent
  as ``EVAL`` (a node whose script cache is empty - restarted, or a promoted replica - would
  fail an ``EVALSHA`` in a pipeline, and the pipeline cannot load it); a call of its own is
  ``EVALSHA``, loaded on a ``NOSCRIPT``. Every script touches keys of one slot (hash tags,
  ``policies/redis_cluster.py``).
* :func:`execute`: a pipeline of worker writes. On a cluster, redis-py sends each node its
  commands on one connection; with :class:`Acks`, each node's part ends with
  ``WAIT <replicas> <ms>``, and a node whose writes fewer replicas hold than
  ``policies.redis_cluster.required_acks`` asks (or whose slots moved meanwhile) raises
  :class:`NotReplicated`, a transient error: the batch is retried (every write is
  idempotent). Why: ``docs/reliability.md`` ("Redis Cluster failover").
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import redis.exceptions
from redis._parsers.commands import CommandPolicies, RequestPolicy, ResponsePolicy
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.backoff import ExponentialBackoff
from redis.commands.policies import AsyncStaticPolicyResolver
from redis.retry import Retry

from policies.redis_cluster import parse_nodes, required_acks

if TYPE_CHECKING:
    from settings import Settings

AnyRedis = Redis | RedisCluster
CLUSTER_RETRIES = 2  # a call's retries, each after refreshing the cluster's slot map
# What a failing Redis raises: a cluster client also raises errors of its own outside
# RedisError (a slot without a master while one fails over: SlotNotCoveredError).
REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
_REDIS_PY = os.path.dirname(redis.__file__) + os.sep


def raised_by_redis_py(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside redis-py's own code (its innermost frame): an
    ``AttributeError`` there is a connection another call disconnected under this one
    (``_writer`` None), a broken connection, not a bug of ours."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_REDIS_PY)


class NotReplicated(redis.exceptions.TimeoutError):
    """A master's writes did not reach the replicas asked for in time (transient: retry)."""


@dataclass(frozen=True)
class Acks:
    """How many replicas hold a worker's write before its batch is acknowledged."""

    replicas: int
    timeout_ms: int

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Acks | None":
        if not settings.redis_cluster or settings.redis_wait_replicas < 1:
            return None
        return cls(settings.redis_wait_replicas, settings.redis_wait_ms)


def startup_nodes(url: str) -> list[tuple[str, int]]:
    """``redis://h1:p1,h2:p2/0`` -> [(h1, p1), (h2, p2)] (port 6379 when missing)."""
    netloc = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
    out = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "6379")
        out.append((host or "127.0.0.1", int(port or 6379)))
    return out


def connect(settings: "Settings", **options: Any) -> AnyRedis:
    """The service's Redis client: ``options`` are redis-py's connection options
    (timeouts, ``health_check_interval``, ``max_connections``)."""
    if not settings.redis_cluster:
        return Redis.from_url(settings.redis_url, **options)
    nodes = [ClusterNode(host, port) for host, port in startup_nodes(settings.redis_url)]
    # Fail fast while a master fails over (a read falls back to Cassandra, a worker's batch
    # retries with its own backoff): redis-py's default backs off 0.4-0.9 s per failed call.
    options.setdefault("retry", Retry(ExponentialBackoff(cap=0.2, base=0.02), CLUSTER_RETRIES))
    options.setdefault("policy_resolver", KeyedPolicies())
    return RedisCluster(startup_nodes=nodes, **options)


_KEYED = CommandPolicies(request_policy=RequestPolicy.DEFAULT_KEYED, response_policy=ResponsePolicy.DEFAULT_KEYED)


class KeyedPolicies(AsyncStaticPolicyResolver):
    """redis-py's routing policies, with every core command redis-py has no policy or node flag
    for routed by its keys' slot - what redis-py itself does once it knows a default node.

    Why: redis-py 8.1's ``RedisCluster.execute_command`` (and the cluster pipeline) picks a
    command's policy BEFORE it initializes the client, and while it knows no default node
    (a fresh client, or right after ``aclose()``, which every 5th MOVED and every
    CLUSTERDOWN call) it falls back to "keyless": a random primary. Concurrent calls on a
    fresh client so went to random masters, got MOVED, every 5th MOVED ran ``aclose()``,
    which forgets the default node again (more random routing) and disconnects every
    connection, also those other calls are using: the read path's ``Connection lost`` and
    ``'NoneType' object has no attribute 'writelines'``."""

    async def resolve(self, command_name: str) -> CommandPolicies | None:
        found = await super().resolve(command_name)
        if found is not None or "." in command_name or command_name.upper() in RedisCluster.COMMAND_FLAGS:
            return found
        return _KEYED


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


class ClusterScript:
    """A script on a cluster: ``EVALSHA`` alone, ``EVAL`` in a pipeline (module doc)."""

    def __init__(self, client: RedisCluster, text: str) -> None:
        self.client = client
        self.text = text
        self._script = client.register_script(text)

    async def __call__(self, keys: Sequence[Any] = (), args: Iterable[Any] = (), client: Any = None) -> Any:
        if client is None or client is self.client:
            return await self._script(keys=keys, args=args)
        return client.execute_command("EVAL", self.text, len(keys), *keys, *args)


def register_script(client: AnyRedis, text: str):
    """``client.register_script(text)``, or a :class:`ClusterScript` on a cluster."""
    return ClusterScript(client, text) if is_cluster(client) else client.register_script(text)


# Per master (``host:port``): how many replicas its writes must reach, as last seen
# (``required_acks``). Below the wanted number (a master whose replica failed), each write's
# pipeline reads the master's view again after its WAIT, so a replica that came back counts
# from the next write on, and a master alone does not stall every batch for TL_REDIS_WAIT_MS.
_required: dict[str, int] = {}


async def execute(client: AnyRedis, pipe: Any, keys: Iterable[str | bytes], acks: Acks | None) -> list[Any]:
    """Execute a non-transactional pipeline of writes to ``keys``; on a cluster with ``acks``,
    only once each master's writes reach its replicas (module doc). Returns the pipeline's
    results (without the WAITs). ``TL_REDIS_WAIT_MS`` must stay below the client's socket
    timeout (the worker's: ``TL_REDIS_TIMEOUT_S``, checked in ``settings.py``)."""
    if acks is None or not is_cluster(client):
        return await pipe.execute()
    await client.initialize()
    planned: dict[str, tuple[ClusterNode, list[str | bytes], int]] = {}
    for key in keys:
        node = client.get_node_from_key(key)
        if node.name not in planned:
            planned[node.name] = (node, [], min(acks.replicas, _required.get(node.name, acks.replicas)))
        planned[node.name][1].append(key)
    queued = len(pipe)
    for node, _, need in planned.values():
        pipe.execute_command("WAIT", need, acks.timeout_ms, target_nodes=node)
        if need < acks.replicas:  # degraded: the master's view right after the WAIT
            pipe.execute_command("CLUSTER NODES", target_nodes=node)
    try:
        results = await pipe.execute()
    except redis.exceptions.RedisClusterException as exc:  # e.g. a retry lost a WAIT's node
        raise NotReplicated(f"cluster changed during a write: {exc!r}") from exc
    answers = iter(results[queued:])
    for node, node_keys, need in planned.values():
        acked = int(next(answers))
        if need < acks.replicas:
            required = _required_from(next(answers), node, acks.replicas)
        elif acked < acks.replicas:
            required = _required_from(await client.execute_command("CLUSTER NODES", target_nodes=node),
                                      node, acks.replicas)
        else:
            required = acks.replicas
        _required[node.name] = required
        if any(client.get_node_from_key(k).name != node.name for k in node_keys):
            raise NotReplicated(f"slots of {node.name} moved during a write")
        if acked < required:
            raise NotReplicated(f"{node.name}: {acked} of {required} replicas acknowledged in {acks.timeout_ms} ms")
    return results[:queued]


def _required_from(raw: Any, node: ClusterNode, wanted: int) -> int:
    """``required_acks`` from the master's own ``CLUSTER NODES`` (raw, or parsed by redis-py)."""
    rows = parse_nodes(raw) if isinstance(raw, (str, bytes)) else _rows_from_dict(raw)
    me = next((r for r in rows if "myself" in r.flags or r.address == node.name), None)
    if me is None:
        return wanted
    return required_acks(wanted, me.node_id, rows)


def _rows_from_dict(parsed: dict) -> list:
    """redis-py's parsed ``CLUSTER NODES`` back into :func:`parse_nodes` rows."""
    lines = []
    for address, info in parsed.items():
        slots = " ".join(f"{s[0]}-{s[-1]}" for s in info.get("slots", []))
        lines.append(f"{info['node_id']} {address} {info['flags']} {info.get('master_id') or '-'} 0 0 0 "
                     f"{'connected' if info.get('connected') else 'disconnected'} {slots}")
    return parse_nodes("\n".join(lines))
