"""A local Redis Cluster: three masters and three replicas from Debian's ``redis-server``.

Six ``redis-server`` processes in cluster mode (``cluster-enabled yes``), in a folder and on
ports the caller gives, joined by ``redis-cli --cluster create ... --cluster-replicas 1``.
A cache like the single server (``redis_server.py``): nothing persisted but each node's
``nodes.conf`` (the cluster's membership and slots, so a restarted node rejoins).

Ports: node ``i`` (0..5) serves on ``base_port + i`` and talks to the others on its cluster
bus port ``base_port + 6 + i``::

    cluster = RedisCluster(STATE / "rcluster" / "x", base_port)
    cluster.up()                      # start the nodes, create the cluster once, wait for "ok"
    settings = cluster.with_servers(settings)   # TL_REDIS_CLUSTER=1, TL_REDIS_URL -> the nodes
    port = cluster.masters()[0]       # who is master now (ports)
    cluster.kill(cluster.index(port)); cluster.wait_promoted(port)   # SIGKILL, failover
    cluster.start(cluster.index(port))   # comes back as a replica of the promoted node
    cluster.down()                    # or reset(): down, then delete the folder

Failover takes ``cluster-node-timeout`` (here :data:`NODE_TIMEOUT_MS`) for the master to be
suspected, the masters' agreement that it failed, and the replica's election (0.5-1 s): the
design promises under 30 s (section 6); ``tests/cluster/test_redis_cluster.py`` measures it.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from localenv.host import log, require_binary, run
from localenv.server_set import ServerSet
from localenv.service import Outcome, Service, ServicesError, stop_all
from localenv.services import start_all, start_or_reuse, wait_ready
from policies.redis_cluster import NodeInfo, live_masters, myself, parse_nodes, slots_covered
from settings import Settings, get_settings

# Long enough that a busy two-core machine (a GC pause of a neighbour, a slow fork) does not
# fail a healthy master over; short enough for failover well under the design's 30 s.
NODE_TIMEOUT_MS = 5000
SLOTS = 16384


@dataclass
class RedisClusterNode(Service):
    """One ``redis-server`` of the cluster, in ``<state>/redis-cluster/node-<index>``."""

    index: int = 0
    node_port: int = 0
    bus_port: int = 0
    listen_host: str = "127.0.0.1"
    node_timeout_ms: int = NODE_TIMEOUT_MS

    start_timeout: ClassVar[float] = 30.0

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"redis-node-{self.index}"

    @property
    def host(self) -> str:
        return self.listen_host

    @property
    def port(self) -> int:
        return self.node_port

    @property
    def dir(self) -> Path:
        return self.state / "redis-cluster" / f"node-{self.index}"

    @property
    def marker(self) -> str:
        return f"{self.dir} "  # the --dir argument (and not node-1 for node-10)

    def data_dirs(self) -> list[Path]:
        return [self.dir]

    def client(self, timeout: float):
        """A plain client of this node alone, without redis-py's retries (a check asks once)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(host=self.host, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout,
                           retry=Retry(NoBackoff(), 0))

    def check(self, timeout: float) -> None:
        client = self.client(timeout)
        try:
            if not client.ping():
                raise RuntimeError("PING did not answer PONG")
        finally:
            client.close()

    def cluster_nodes(self, timeout: float = 2.0) -> list[NodeInfo]:
        client = self.client(timeout)
        try:
            return parse_nodes(_raw(client, "CLUSTER", "NODES"))
        finally:
            client.close()

    def prepare(self) -> None:
        require_binary("redis-server", "redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", self.host, "--protected-mode", "yes",
            "--dir", str(self.dir), "--daemonize", "no", "--logfile", "",
            "--set-proc-title", "no",  # keep --dir in the command line: our_pid() checks it
            "--save", "", "--appendonly", "no",  # a cache: nothing to persist
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(self.bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # The other shards keep serving while one master fails over.
            "--cluster-require-full-coverage", "no",
            "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru",
            # A replica's full sync starts at once (the default waits 5 s for more replicas).
            "--repl-diskless-sync-delay", "0",
        ]


def _raw(client, *args) -> bytes | str:
    """A command's raw reply (no redis-py response callback)."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        client.connection_pool.release(conn)


class RedisCluster:
    """Three masters, three replicas (``NODES``), each on its own port; see the module doc."""

    NODES: ClassVar[int] = 6
    REPLICAS: ClassVar[int] = 1
    SPAN: ClassVar[int] = 12  # six client ports, then six cluster bus ports

    def __init__(self, state_dir: Path, base_port: int, settings: Settings | None = None,
                 host: str = "127.0.0.1", node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        self.state = Path(state_dir).resolve()
        self.base_port = base_port
        self.host = host
        self.node_timeout_ms = node_timeout_ms
        self.settings = self.with_servers(settings or get_settings())
        self.nodes = [
            RedisClusterNode(self.settings, state=self.state, index=i, node_port=base_port + i,
                             bus_port=base_port + self.NODES + i, listen_host=host,
                             node_timeout_ms=node_timeout_ms)
            for i in range(self.NODES)
        ]

    # -- addresses
    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.NODES)]

    @property
    def url(self) -> str:
        """Every node as a startup node (the client learns the rest from any one of them)."""
        return "redis://" + ",".join(f"{self.host}:{p}" for p in self.ports)

    def with_servers(self, settings: Settings) -> Settings:
        """``settings`` pointed at this cluster (``TL_REDIS_CLUSTER=1``)."""
        return settings.replace(redis_url=self.url, redis_cluster=True)

    def index(self, port: int) -> int:
        return self.ports.index(port)

    # ServerSet's port search, over this class's SPAN (and away from the fault suite's 291xx-293xx).
    ports_free = classmethod(ServerSet.ports_free.__func__)  # type: ignore[attr-defined]

    @classmethod
    def free_base_port(cls, start: int = 31400, step: int = 20) -> int:
        """The first ``start + k * step`` whose ports nobody listens on."""
        return ServerSet.free_base_port.__func__(cls, start, step)  # type: ignore[attr-defined]

    # -- life cycle
    def up(self, echo=log, timeout: float = 60.0) -> list[Outcome]:
        """Start the nodes that are not running, create the cluster if it was never created
        (or was reset), and wait until every node says ``cluster_state:ok``."""
        began = time.monotonic()
        self.state.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            if node.our_pid() is None and node.port_taken():
                raise ServicesError(f"{node.name}: port {node.port} is taken by a process this "
                                    f"cluster ({self.state}) did not start")
        outcomes = start_all(self.settings, list(self.nodes))
        for outcome in outcomes:
            echo(outcome.line())
        failed = [o for o in outcomes if not o.up]
        if failed:
            raise ServicesError("\n".join(o.line() + "\n" + "\n".join(o.log_tail) for o in failed))
        if not self.created():
            self.create()
        self.wait_ok(timeout)
        echo(f"redis cluster {self.state} on ports {self.base_port}..{self.base_port + self.SPAN - 1}"
             f" up in {time.monotonic() - began:.1f}s: masters {self.masters()}")
        return outcomes

    def created(self) -> bool:
        """Every node knows the others and the slots are assigned (its nodes.conf survived)."""
        try:
            rows = self.nodes[0].cluster_nodes()
        except Exception:  # noqa: BLE001 - not up: not created as far as we can tell
            return False
        return len(rows) == self.NODES and slots_covered(rows) == SLOTS

    def create(self) -> None:
        addresses = [n.address for n in self.nodes]
        run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create", *addresses,
             "--cluster-replicas", str(self.REPLICAS), "--cluster-yes"], timeout=120)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every running node reports ``cluster_state:ok``, every slot has a master that
        is not failed, and every master a replica in sync."""
        deadline = time.monotonic() + timeout
        problem = "not checked"
        while time.monotonic() < deadline:
            problem = self._problem()
            if problem is None:
                return
            time.sleep(0.2)
        raise ServicesError(f"redis cluster {self.state} not ok after {timeout:.0f}s: {problem}")

    def _problem(self) -> str | None:
        running = [n for n in self.nodes if n.our_pid() is not None]
        if not running:
            return "no node runs"
        for node in running:
            try:
                client = node.client(2.0)
                try:
                    info = client.cluster("info")
                    repl = client.info("replication")
                finally:
                    client.close()
            except Exception as exc:  # noqa: BLE001 - not ready yet
                return f"{node.name}: {exc!r}"
            if info.get("cluster_state") != "ok":
                return f"{node.name}: cluster_state {info.get('cluster_state')}"
            if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                return f"{node.name}: replica link {repl.get('master_link_status')}"
        rows = running[0].cluster_nodes()
        if slots_covered(rows) != SLOTS:
            return f"{slots_covered(rows)} of {SLOTS} slots covered"
        return None

    def view(self) -> list[NodeInfo]:
        """``CLUSTER NODES`` as the first node that answers sees it."""
        errors = []
        for node in self.nodes:
            if node.our_pid() is None:
                continue
            try:
                return node.cluster_nodes()
            except Exception as exc:  # noqa: BLE001 - try the next one
                errors.append(f"{node.name}: {exc!r}")
        raise ServicesError("no node of the cluster answers: " + "; ".join(errors))

    def masters(self) -> list[int]:
        """Ports of the masters now (owning slots, not failed or suspected)."""
        return [n.port for n in live_masters(self.view())]

    def replicas_of(self, port: int) -> list[int]:
        rows = self.view()
        master = next((n for n in rows if n.port == port), None)
        return [] if master is None else [n.port for n in rows if n.master_id == master.node_id]

    def status(self) -> list[str]:
        """One line per node: port, pid, role as the cluster sees it, slots."""
        try:
            rows = {n.port: n for n in self.view()}
        except ServicesError:
            rows = {}
        lines = []
        for node in self.nodes:
            pid = node.our_pid()
            row = rows.get(node.port)
            role = ",".join(sorted(row.flags - {"myself"})) if row else "?"
            slots = " ".join(f"{a}-{b}" for a, b in row.slots) if row and row.slots else ""
            lines.append(f"{node.name:<13} {node.address:<16} {'pid ' + str(pid) if pid else 'down':<10} "
                         f"{role:<14} {slots}")
        return lines

    def kill(self, index: int, timeout: float = 30.0) -> int:
        """SIGKILL one node, as a crash would (``Service.kill``); returns when it is gone and its
        port is free."""
        return self.nodes[index].kill(timeout)

    def start(self, index: int) -> Outcome:
        """Start one node again (after ``kill``) and wait until it answers; it rejoins from its
        nodes.conf (empty: nothing was persisted), as a replica if it was failed over."""
        node = self.nodes[index]
        result = start_or_reuse(node)
        outcome = result if isinstance(result, Outcome) else wait_ready(node, result)
        if not outcome.up:
            raise ServicesError(outcome.line() + "\n" + "\n".join(outcome.log_tail))
        return outcome

    def slots_of(self, port: int) -> tuple[tuple[int, int], ...]:
        return next((n.slots for n in self.view() if n.port == port), ())

    def wait_promoted(self, old_master: int, timeout: float = 60.0,
                      slots: tuple[tuple[int, int], ...] | None = None) -> tuple[int, float]:
        """Wait until the slots ``old_master`` had (``slots``, taken before it was killed; by
        default what the cluster says now) belong to a live master again; returns (the new
        master's port, seconds waited)."""
        began = time.monotonic()
        wanted = set(slots if slots is not None else self.slots_of(old_master))
        if not wanted:
            raise ServicesError(f"{old_master} owns no slots: pass the slots it had")
        while time.monotonic() - began < timeout:
            try:
                for row in live_masters(self.view()):
                    if row.port != old_master and wanted <= set(row.slots):
                        return row.port, time.monotonic() - began
            except ServicesError:
                pass
            time.sleep(0.1)
        raise ServicesError(f"no replica of {old_master} promoted after {timeout:.0f}s")

    def down(self, echo=log) -> None:
        stop_all(self.nodes, [f"{node.name:<13}" for node in self.nodes], echo)

    def reset(self, echo=log) -> None:
        """down, then delete the cluster's folder (data and nodes.conf)."""
        self.down(echo)
        if self.state.exists():
            shutil.rmtree(self.state)
            echo(f"{'reset':<13} removed {self.state}")

    def me(self, index: int) -> NodeInfo | None:
        return myself(self.nodes[index].cluster_nodes())
