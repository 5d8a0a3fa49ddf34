"""Three Kafka brokers (KRaft) that authenticate and authorize every client: the cluster
topology's log.

Each node is a combined broker+controller (a quorum of three voters) from the same jars,
Java and log4j setup as the single broker (``localenv/kafka_server.py``), with a small heap.
Topics default to three replicas with two in sync for an ``acks=all`` write (the offsets and
transaction logs too), so one broker can die without losing an acknowledged record or
refusing writes; no topic is created automatically.

Security: the client listener (also the brokers' own) takes SASL/SCRAM-SHA-512 only, the
controller listener SASL/PLAIN with a static JAAS user (SCRAM cannot authenticate controllers,
whose credentials live in the metadata log they serve). ``StandardAuthorizer`` with
``allow.everyone.if.no.acl.found=false``: a principal does what an ACL allows
(``policies/kafka_access.py``) and nothing more; ``admin`` is the super user the brokers and
provisioning use. The SCRAM users of the service's roles (``post``, ``query``, ``worker``)
are created when the storage is formatted; their passwords are generated once and kept in
``<folder>/credentials.json``::

    cluster = KafkaCluster(STATE / "kcluster", KafkaCluster.free_base_port(39400))
    cluster.up()                                   # three nodes, waits for all of them
    admin = cluster.settings_for("admin", base)    # Settings pointing at it, as a principal
    cluster.grant(namespace_settings)              # the namespace's ACLs for the roles
    cluster.kill(2); cluster.start(2)              # SIGKILL one broker, start it again
    cluster.down()                                 # or reset(): down, then delete the folder

Ports from ``base_port``: node ``i`` (1..3) serves clients on ``base_port + 2(i-1)`` and
its controller on the port after it.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterable

from localenv.host import JARS, fetch_jars, java17, log, run
from localenv.kafka_server import _KAFKA_LOG4J, KAFKA_JARS, Kafka, cluster_id, log_properties
from localenv.server_set import ServerSet
from localenv.service import Outcome, Service, ServicesError
from ops import schema
from policies.kafka_access import ROLES, namespace_bindings, producer_bindings
from settings import Settings, get_settings

ADMIN = "admin"
MECHANISM = "SCRAM-SHA-512"
NODES = (1, 2, 3)


@dataclass
class KafkaNode(Kafka):
    """One broker+controller of a ``KafkaCluster`` (``settings``: the admin's, on this node)."""

    node_id: int = 1
    listen_host: str = "127.0.0.1"
    client_port: int = 0
    voters: str = ""  # controller.quorum.voters
    cluster_id: str = ""
    users: tuple[tuple[str, str], ...] = ()  # SCRAM users created at format time
    heap: str = "512m"

    start_timeout: ClassVar[float] = 180.0

    @property
    def name(self) -> str:  # type: ignore[override]  # log, pid file: one per node
        return f"kafka-{self.node_id}"

    @property
    def host(self) -> str:
        return self.listen_host

    @property
    def port(self) -> int:
        return self.client_port

    @property
    def controller_port(self) -> int:
        return self.client_port + 1

    @property
    def home(self) -> Path:
        return self.state / self.name

    @property
    def data(self) -> Path:
        return self.state / f"{self.name}-data"

    def data_dirs(self) -> list[Path]:
        return [self.home, self.data]

    def config_drift(self, timeout: float = 5.0) -> list[str]:
        return []

    def prepare(self) -> None:
        fetch_jars("kafka", KAFKA_JARS)
        self.home.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        config.write_text(self._server_properties())
        config.chmod(0o600)  # the admin's password
        (self.home / "log4j.properties").write_text(_log4j())
        if not (self.data / "meta.properties").exists():
            scram = [arg for user, password in self.users
                     for arg in ("--add-scram", f"{MECHANISM}=[name={user},password={password}]")]
            run([java17(), "-Xmx256m", *self._log_opts(), "-cp", f"{self.lib}/*", "kafka.tools.StorageTool",
                 "format", "--ignore-formatted", "-t", self.cluster_id, "-c", str(config), *scram],
                timeout=300)

    def command(self) -> list[str]:
        return [
            java17(), "-Xms128m", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            *self._log_opts(), "-cp", f"{self.lib}/*", "kafka.Kafka", str(self.home / "server.properties"),
        ]

    def _server_properties(self) -> str:
        host, password = self.host, self.settings.kafka_password
        scram = f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN}" password="{password}";'
        plain = (f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{ADMIN}" '
                 f'password="{password}" user_{ADMIN}="{password}";')
        return f"""# Generated by localenv/kafka_cluster.py: node {self.node_id} of three KRaft broker+controllers.
process.roles=broker,controller
node.id={self.node_id}
controller.quorum.voters={self.voters}
listeners=CLIENT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}
advertised.listeners=CLIENT://{host}:{self.port}
listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=CLIENT
controller.listener.names=CONTROLLER
listener.name.client.sasl.enabled.mechanisms={MECHANISM}
listener.name.client.{MECHANISM.lower()}.sasl.jaas.config={scram}
sasl.mechanism.inter.broker.protocol={MECHANISM}
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain}
sasl.mechanism.controller.protocol=PLAIN
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{ADMIN}
unclean.leader.election.enable=false
# A dead broker is fenced (and leaves every ISR) after 6 s without a heartbeat (default 9 s).
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
num.replica.fetchers=1
""" + log_properties(self.data, replication=len(NODES), io_threads=2, dedupe_buffer=16 << 20)


def _log4j() -> str:
    # Denied requests are logged (INFO) by kafka.authorizer.logger: the broker's side of an ACL error.
    return _KAFKA_LOG4J.replace("kafka_server.py", "kafka_cluster.py") + "log4j.logger.kafka.authorizer.logger=INFO\n"


class KafkaCluster(ServerSet):
    """Three KRaft nodes in ``state_dir``, on ports from ``base_port`` (``ServerSet``'s
    ``up``/``down``/``reset``/``kill``/``start``/``pause``/``resume``, by node number or name)."""

    SPAN: ClassVar[int] = 2 * len(NODES)

    def __init__(self, state_dir: Path, base_port: int, settings: Settings | None = None,
                 host: str = "127.0.0.1", heap: str = "512m") -> None:
        self.state = Path(state_dir).resolve()
        self.base_port = base_port
        self.host = host
        self.base = settings or get_settings()
        self.credentials = self._credentials()
        ports = {i: base_port + 2 * (i - 1) for i in NODES}
        self._bootstrap = ",".join(f"{host}:{ports[i]}" for i in NODES)
        self.settings = self.settings_for(ADMIN)
        voters = ",".join(f"{i}@{host}:{ports[i] + 1}" for i in NODES)
        users = tuple(sorted(self.credentials.items()))
        self._services: dict[str, Service] = {}
        for i in NODES:
            node = KafkaNode(self.settings.replace(kafka_bootstrap=f"{host}:{ports[i]}"), state=self.state,
                             node_id=i, listen_host=host, client_port=ports[i], voters=voters,
                             cluster_id=cluster_id(self.state / "cluster-id"), users=users, heap=heap)
            self._services[node.name] = node

    # -- where and who ------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return self._bootstrap

    def settings_for(self, principal: str = ADMIN, settings: Settings | None = None) -> Settings:
        """``settings`` (default: the base settings) pointed at this cluster, authenticated as
        ``principal`` (``admin``, a role of ``policies.kafka_access.ROLES``, or a producer added
        with ``add_producer``), with topics at three replicas."""
        if principal not in self.credentials:
            raise KeyError(f"no SCRAM user {principal!r} in {self.state} (known: {sorted(self.credentials)})")
        return (settings or self.base).replace(
            kafka_bootstrap=self.bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
            misplaced_events="dead-letter",  # the worker may not write the source topics
            kafka_sasl_mechanism=MECHANISM, kafka_username=principal,
            kafka_password=self.credentials[principal], topic_replication=len(NODES))

    def _credentials(self) -> dict[str, str]:
        path = self.state / "credentials.json"
        if path.exists():
            return json.loads(path.read_text())
        self.state.mkdir(parents=True, exist_ok=True)
        creds = {user: secrets.token_hex(16) for user in (ADMIN, *ROLES)}
        self._save_credentials(creds)
        return creds

    def _save_credentials(self, creds: dict[str, str]) -> None:
        path = self.state / "credentials.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(creds, indent=1, sort_keys=True))
        tmp.chmod(0o600)
        os.replace(tmp, path)

    # -- the nodes ------------------------------------------------------------------------
    def nodes(self) -> list[KafkaNode]:
        return [self._services[f"kafka-{i}"] for i in NODES]  # type: ignore[misc]

    def services(self) -> list[Service]:
        return list(self.nodes())

    def node(self, node: int | str) -> KafkaNode:
        return self._services[node if isinstance(node, str) else f"kafka-{node}"]  # type: ignore[return-value]

    def kill(self, node: int | str, timeout: float = 30.0) -> int:  # type: ignore[override]
        """SIGKILL one node (a crash: nothing flushed); returns when its process is gone."""
        return super().kill(self.node(node).name, timeout)

    def start(self, node: int | str) -> Outcome:  # type: ignore[override]
        return super().start(self.node(node).name)

    def pause(self, node: int | str) -> int:  # type: ignore[override]
        return super().pause(self.node(node).name)

    def resume(self, node: int | str) -> int:  # type: ignore[override]
        return super().resume(self.node(node).name)

    def pid(self, node: int | str) -> int | None:  # type: ignore[override]
        return self.node(node).our_pid()

    def up(self, echo=log, timeout: float = 120.0) -> list[Outcome]:
        """Start the nodes that are not running; returns when all three are brokers of the
        cluster (registered and unfenced)."""
        outcomes = super().up(echo)
        self.wait_brokers(len(NODES), timeout)
        return outcomes

    def status(self) -> list[Outcome]:
        out = []
        for node in self.nodes():
            pid = node.our_pid()
            up = pid is not None and node.is_up(3.0)
            out.append(Outcome(node.name, node.address, up, f"pid {pid}" if pid else "not running"))
        return out

    def brokers(self, timeout: float = 5.0) -> list[int]:
        """The ids of the brokers the cluster's metadata lists now (unfenced ones)."""
        return schema.run_sync(self._brokers(timeout))

    async def _brokers(self, timeout: float) -> list[int]:
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**self.settings.kafka_kwargs(), request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
        finally:
            await admin.close()
        return sorted(b["node_id"] for b in cluster["brokers"])

    def wait_brokers(self, count: int, timeout: float = 120.0) -> list[int]:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = self.brokers()
                if len(last) >= count:
                    return last  # type: ignore[return-value]
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            time.sleep(0.5)
        raise ServicesError(f"Kafka cluster {self.state}: not {count} brokers after {timeout:.0f}s: {last!r}")

    # -- principals and ACLs --------------------------------------------------------------
    def grant(self, settings: Settings, users: dict[str, str] | None = None) -> int:
        """The ACLs the service's roles need on ``settings``' topics and consumer group."""
        from ops.kafka_acls import apply_acls

        return schema.run_sync(apply_acls(self.settings, namespace_bindings(settings, users)))

    def add_producer(self, name: str, topics: Iterable[str], password: str | None = None) -> Settings:
        """A producer an operator names: a SCRAM user allowed to write ``topics``; returns
        the base settings authenticated as it."""
        from ops.kafka_acls import apply_acls

        password = password or secrets.token_hex(16)
        admin_config = self.state / "admin.properties"
        admin_config.write_text(
            f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism={MECHANISM}\n"
            f"sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password="{self.credentials[ADMIN]}";\n')
        admin_config.chmod(0o600)
        node = self.nodes()[0]
        run([java17(), "-Xmx256m", *node._log_opts(), "-cp", f"{JARS / 'kafka' / 'lib'}/*", "kafka.admin.ConfigCommand",
             "--bootstrap-server", self.bootstrap, "--command-config", str(admin_config), "--alter",
             "--add-config", f"{MECHANISM}=[password={password}]", "--entity-type", "users", "--entity-name", name],
            timeout=120)
        self.credentials[name] = password
        self._save_credentials(self.credentials)
        schema.run_sync(apply_acls(self.settings, producer_bindings(name, topics)))
        return self.settings_for(name)
