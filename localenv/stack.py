"""The whole service in the background: ``./dev up | status | down``
(``python -m localenv.stack up [--no-seed] | status | down``).

``up`` starts what is not running and reuses what is: the four servers (``localenv.services``,
or a ``ServerSet``), the supervised stream worker (with ``TL_WORKER_LAYOUT=split``, one per
role: ``worker-fanout`` and ``worker-deliver``), the Post service, the query service, the
servers' exporters and Prometheus, whose scrape config names every process started here
(``ops/monitoring/scrape.py``). It waits until each one answers, seeds a small world
through the public API the first time (``--no-seed`` skips it) and prints a table of URLs.
Logs in ``<state>/logs/``, pid files in ``<state>/run/``.

``down`` stops the processes this stack runs, and the servers only if ``up`` started them
(``<state>/run/dev-up.json``): servers that ``./dev services up``, another checkout or the
machine started stay up. Ports: ``StackPorts`` (defaults below, ``StackPorts.free()`` for tests).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from localenv.exporters import PostgresExporter, RedisExporter
from localenv.host import STATE, HostError
from localenv.jmx_exporter import agent_answers
from localenv.processes import DashboardPage, PostService, QueryService, StreamWorker
from localenv.prometheus_server import DEFAULT_PORT as PROMETHEUS_PORT, Prometheus
from localenv.server_set import ServerSet
from localenv.service import Outcome, Service, ServicesError
from localenv.services import apply_schemas, exclusive, raise_failed, start_all
from localenv.services import services as shared_servers
from localenv.services import up as shared_up
from localenv.worker import free_port
from ops.monitoring import scrape
from policies.worker_layout import LAYOUTS
from settings import Settings, get_settings


@dataclass(frozen=True)
class StackPorts:
    worker: int = 6066  # the split layout's second process (stage 2) listens on worker_deliver
    worker_deliver: int = 6067
    post: int = 8081
    query: int = 8082
    prometheus: int = PROMETHEUS_PORT
    redis_exporter: int = int(os.environ.get("TL_REDIS_EXPORTER_PORT", "9121"))
    postgres_exporter: int = int(os.environ.get("TL_POSTGRES_EXPORTER_PORT", "9187"))
    dashboard: int = int(os.environ.get("TL_DASHBOARD_PORT", "9095"))

    @classmethod
    def for_settings(cls, settings: Settings) -> "StackPorts":
        return cls(worker=settings.faust_web_port, worker_deliver=settings.faust_web_port + 1)

    @classmethod
    def free(cls) -> "StackPorts":
        return cls(**{name: free_port() for name in asdict(cls())})


@dataclass
class Row:
    name: str
    url: str
    up: bool
    detail: str

    def line(self) -> str:
        return f"{self.name:<18} {'up' if self.up else 'DOWN':<5} {self.url:<34} {self.detail}"


class Stack:
    """Servers, processes and monitoring of one state folder."""

    def __init__(self, settings: Settings | None = None, state: Path = STATE,
                 ports: StackPorts | None = None, server_set: ServerSet | None = None) -> None:
        base = settings or get_settings()
        self.server_set = server_set
        self.settings = server_set.with_servers(base) if server_set else base
        self.state = Path(state)
        self.ports = ports or StackPorts.for_settings(self.settings)
        p, s, st = self.ports, self.settings, self.state
        self.servers: list[Service] = server_set.services() if server_set else shared_servers(s)
        # One worker process per role of the layout (policies/worker_layout.py); ``worker`` is the first.
        roles = LAYOUTS[s.worker_layout]
        self.workers = [StreamWorker(s, state=st, listen_port=port, role=role)
                        for role, port in zip(roles, (p.worker, p.worker_deliver))]
        self.worker = self.workers[0]
        self.post = PostService(s, state=st, listen_port=p.post)
        self.query = QueryService(s, state=st, listen_port=p.query)
        self.exporters = [RedisExporter(s, state=st, listen_port=p.redis_exporter),
                          PostgresExporter(s, state=st, listen_port=p.postgres_exporter)]
        self.prometheus = Prometheus(s, state=st, listen_port=p.prometheus)
        self.prometheus.targets = self.scrape_targets()
        self.dashboard = DashboardPage(s, state=st, listen_port=p.dashboard, prometheus_url=self.prometheus.url)

    @property
    def processes(self) -> list[Service]:
        """What the stack itself runs, in start order (Prometheus after what it scrapes, then the
        dashboard page that reads it)."""
        return [*self.workers, self.post, self.query, *self.exporters, self.prometheus, self.dashboard]

    @property
    def ledger(self) -> Path:
        return self.state / "run" / "dev-up.json"

    def server(self, name: str) -> Service:
        return next(svc for svc in self.servers if svc.name == name)

    def scrape_targets(self) -> dict[str, list[str]]:
        kafka, cassandra = self.server("kafka"), self.server("cassandra")
        redis_exp, pg_exp = self.exporters
        return {
            scrape.WORKER: [w.address for w in self.workers], scrape.POST: [self.post.address],
            scrape.QUERY: [self.query.address], scrape.PROMETHEUS: [self.prometheus.address],
            scrape.REDIS: [redis_exp.address], scrape.POSTGRES: [pg_exp.address],
            scrape.KAFKA: [f"{kafka.host}:{kafka.agent_port}"],
            scrape.CASSANDRA: [f"{cassandra.host}:{cassandra.agent_port}"],
        }

    # -- up -----------------------------------------------------------------------------
    def up(self, seed: bool = True, echo=print) -> list[Row]:
        with exclusive(self.state / "run" / "dev-up.lock"):
            outcomes = self._servers_up(echo)
            started = {o.name for o in outcomes if o.detail.startswith("started")}
            self._remember(started)
            for line in self.agent_notes():
                echo(line)
            self.prometheus.set_targets(self.scrape_targets())
            raise_failed(start_all(self.settings, self.processes))
            if seed and not (self.state / "run" / "dev-seeded").exists():
                echo(self.seed())
                (self.state / "run" / "dev-seeded").write_text(self.settings.app_id + "\n")
        rows = self.status()
        for row in rows:
            echo(row.line())
        return rows

    def _servers_up(self, echo) -> list[Outcome]:
        if self.server_set is None:
            return shared_up(self.settings, echo=echo)
        outcomes = self.server_set.up(echo=echo)
        apply_schemas(self.settings, echo=echo)
        return outcomes

    def _remember(self, started: set[str]) -> None:
        known = self.started_servers()
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        self.ledger.write_text(json.dumps({"servers": sorted(known | started)}) + "\n")

    def started_servers(self) -> set[str]:
        try:
            return set(json.loads(self.ledger.read_text())["servers"])
        except (OSError, ValueError, KeyError):
            return set()

    def agent_notes(self) -> list[str]:
        """Kafka or Cassandra running without the JMX exporter agent (started by an older
        checkout): their metrics are missing until they are restarted."""
        lines = []
        for name in ("kafka", "cassandra"):
            svc = self.server(name)
            if not agent_answers(svc.host, svc.agent_port):
                how = ("./dev down && ./dev up" if name in self.started_servers()
                       else "./dev services down && ./dev up" if svc.our_pid() else "restart it by hand")
                lines.append(f"{name:<10} NOTE  runs without the metrics agent on :{svc.agent_port} "
                             f"(started before it was added): no {name} metrics until restarted ({how})")
        return lines

    def seed(self, users: int = 16, writes: int = 60, reads: int = 80) -> str:
        """A small world through the public API (sign-ups, follows, tweets, reads), so the
        dashboard has something to show: ``ops.faults.load.Scenario``'s seeded traffic."""
        return asyncio.run(_seed(self.post.url, self.query.url, users, writes, reads))

    # -- status and down ---------------------------------------------------------------
    def status(self) -> list[Row]:
        rows = []
        started = self.started_servers()
        for svc in self.servers:
            up, pid = svc.is_up(3.0), svc.our_pid()
            owner = ("started by ./dev up" if svc.name in started
                     else "not started by ./dev up: down leaves it running")
            rows.append(Row(svc.name, svc.address, up, f"pid {pid}, {owner}" if pid else owner))
        for svc in self.processes:
            up, pid = svc.is_up(3.0), svc.our_pid()
            detail = f"pid {pid}" if pid else ("not started by us" if up else "not running")
            rows.append(Row(svc.name, _url(svc), up, detail))
        return rows

    def down(self, echo=print) -> None:
        for svc in reversed(self.processes):
            echo(f"{svc.name:<18} {svc.stop()}")
        started = self.started_servers()
        for svc in self.servers:
            if svc.name in started:
                echo(f"{svc.name:<18} {svc.stop()}")
            else:
                echo(f"{svc.name:<18} left running (not started by ./dev up)")
        self.ledger.unlink(missing_ok=True)


def _url(svc: Service) -> str:
    if isinstance(svc, StreamWorker) or svc.name.endswith("exporter"):
        return f"http://{svc.address}/metrics"
    return f"http://{svc.address}"


async def _seed(post_url: str, query_url: str, users: int, writes: int, reads: int) -> str:
    from ops.faults.load import Api, Scenario

    api = Api(post_url, query_url)
    try:
        world = Scenario(api, seed=7, users=users, celebrities=1)
        await world.setup(concurrency=4)
        for _ in range(writes):
            await world.step()
        for _ in range(reads):
            await world.read()
        return (f"{'seed':<18} ok    {len(world.people)} users, {len(world.accepted)} tweets, "
                f"{reads} home timeline reads through the API")
    finally:
        await api.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "status", "down"])
    parser.add_argument("--no-seed", action="store_true", help="up: do not seed a small world")
    args = parser.parse_args(argv)
    from localenv.__main__ import _quiet_client_logs

    _quiet_client_logs()
    stack = Stack()
    try:
        if args.command == "up":
            stack.up(seed=not args.no_seed)
            print(f"logs in {stack.state / 'logs'}; ./dev status, ./dev down")
        elif args.command == "status":
            rows = stack.status()
            for row in rows:
                print(row.line())
            return 0 if all(r.up for r in rows) else 1
        else:
            stack.down()
    except (ServicesError, HostError) as exc:
        print(f"\nFAILED\n{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
