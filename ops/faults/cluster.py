"""The system under test of the fault suite and the soak, on a private set of servers.

:class:`Cluster` is a namespace (``Settings.isolated``) on a :class:`localenv.server_set.ServerSet`,
its Faust workers (``localenv.worker.Worker`` child processes, each a static member of the
consumer group with its own RocksDB folder) and the two HTTP services
(:class:`ServiceProcess`: ``python -m post.service`` / ``query.service`` under
uvicorn, as child processes, so they can be killed and their memory read like the
workers').
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

import httpx

from localenv.server_set import ServerSet
from localenv.host import terminate
from localenv.worker import ROOT, Worker, free_port, settings_env, tail
from ops.group import describe as describe_group
from ops.schema import apply_cassandra, apply_postgres, create_topics_async, drop_namespace
from policies.worker_layout import LAYOUTS
from settings import Settings


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (VmRSS), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class ServiceProcess:
    """One HTTP service (``post.service`` or ``query.service``) as a child process."""

    def __init__(self, module: str, settings: Settings, log_path: Path, *, port: int | None = None,
                 workers: int = 1) -> None:
        self.module = module
        self.workers = workers  # > 1: uvicorn's supervisor and that many server processes
        self.settings = settings
        self.log_path = log_path
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServiceProcess":
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", str(self.port), "--log-level", "warning",
             "--workers", str(self.workers)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until ``GET /healthz`` answers 200 (every dependency up)."""
        end = time.monotonic() + timeout
        last: Any = None
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < end:
                self.check()
                try:
                    resp = await client.get(f"{self.url}/healthz")
                    if resp.status_code == 200:
                        return
                    last = resp.text[:300]
                except httpx.HTTPError as exc:
                    last = repr(exc)
                await asyncio.sleep(0.3)
        raise TimeoutError(f"{self.module} not healthy after {timeout:.0f}s: {last}\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.module} exited with {self.proc and self.proc.returncode}:\n"
                               f"{self.log_tail()}")

    def rss(self) -> int | None:
        return rss_bytes(self.proc.pid) if self.alive() else None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            terminate(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


class Cluster:
    """A namespace on a private server set, its workers and its HTTP services."""

    def __init__(self, servers: ServerSet, workdir: Path, *, namespace: str = "faults",
                 workers: int = 2, static_membership: bool = True, **overrides: Any) -> None:
        self.servers = servers
        self.workdir = Path(workdir)
        self.tag = uuid.uuid4().hex[:8]
        self.settings = servers.settings.isolated(namespace, self.tag, self.workdir, **overrides)
        self.static_membership = static_membership
        self.worker_names = [f"w{i + 1}" for i in range(workers)]
        self.workers: dict[str, Worker] = {}
        self._web_ports: dict[str, dict[str, int]] = {}  # worker -> role -> web port
        self.post: ServiceProcess | None = None
        self.query: ServiceProcess | None = None

    # --- namespace -------------------------------------------------------------------------
    async def provision(self) -> None:
        await asyncio.to_thread(apply_cassandra, self.settings)
        await asyncio.to_thread(apply_postgres, self.settings)
        await create_topics_async(self.settings, partitions=self.settings.topic_partitions)

    async def drop(self) -> dict[str, Any]:
        return await drop_namespace(self.settings)

    # --- workers ----------------------------------------------------------------------------
    def worker_settings(self, name: str) -> Settings:
        return self.settings.replace(
            faust_datadir=str(self.workdir / name),
            worker_name=name,
            worker_static_membership=self.static_membership,
        )

    def start_worker(self, name: str) -> Worker:
        """Start (or start again, with the same RocksDB folder and instance id) a worker."""
        old = self.workers.get(name)
        if old is not None and old.alive():
            raise RuntimeError(f"worker {name} is running")
        # The same web port as before: Faust puts the worker's URL in its group metadata, and
        # a static member given its old assignment back asserts that the URL is its own.
        worker = Worker(self.worker_settings(name), self.workdir / f"{name}.log",
                        role_ports=self._web_ports.get(name)).start()
        self._web_ports[name] = dict(worker.web_ports)
        self.workers[name] = worker
        return worker

    def start_workers(self) -> None:
        for name in self.worker_names:
            self.start_worker(name)

    def kill_worker(self, name: str) -> int:
        worker = self.workers[name]
        pid = worker.proc.pid
        worker.kill()
        return pid

    def check_workers(self) -> None:
        for worker in self.workers.values():
            worker.check()

    def worker_pids(self) -> dict[str, int]:
        return {name: w.proc.pid for name, w in self.workers.items() if w.alive()}

    def role_settings(self) -> list[Settings]:
        """The settings of each role's consumer group (``policies/worker_layout.py``): the one
        group of the ``one`` layout, or the ``fanout`` group (``tweets``) then ``deliver``."""
        roles = LAYOUTS[self.settings.worker_layout]
        if roles == ("all",):
            return [self.settings]
        return [self.settings.replace(worker_role=role) for role in roles]

    async def assignment(self, settings: Settings | None = None) -> tuple[str, dict[str, set[int]]]:
        """A role's group (by default the one that consumes ``tweets``): its state and, per
        member (named by its worker name), the partitions of the role's first topic it owns."""
        settings = settings or self.role_settings()[0]
        topic = settings.worker_groups()[settings.worker_group][0]
        group = await describe_group(settings)
        owned = {(m.name(settings) or m.member_id): set(m.partitions.get(topic, ())) for m in group.members}
        return group.state, owned

    async def wait_members(self, n: int, timeout: float = 120.0) -> dict[str, set[int]]:
        """Until every role's group is stable with ``n`` members that together own every
        partition; returns the assignment of the group that consumes ``tweets``."""
        last: Any = None
        end = time.monotonic() + timeout
        every = set(range(self.settings.topic_partitions))
        while time.monotonic() < end:
            self.check_workers()
            try:
                found = [await self.assignment(s) for s in self.role_settings()]
                last = found
                if all(state == "Stable" and len(owned) == n and all(owned.values())
                       and set().union(*owned.values()) == every for state, owned in found):
                    return found[0][1]
            except Exception as exc:  # noqa: BLE001 - coordinator not ready yet
                last = exc
            await asyncio.sleep(0.5)
        raise TimeoutError(f"consumer groups never had {n} stable members owning every partition: {last!r}")

    # --- HTTP services ------------------------------------------------------------------------
    async def start_services(self) -> None:
        self.post = ServiceProcess("post.service", self.settings, self.workdir / "post.log").start()
        self.query = ServiceProcess("query.service", self.settings, self.workdir / "query.log").start()
        await asyncio.gather(self.post.wait_ready(), self.query.wait_ready())

    def check_services(self) -> None:
        for svc in (self.post, self.query):
            if svc is not None:
                svc.check()

    # --- all of it ------------------------------------------------------------------------------
    def stop(self) -> None:
        for svc in (self.post, self.query):
            if svc is not None:
                svc.stop()
        for worker in self.workers.values():
            worker.stop()

    def logs(self, lines: int = 30) -> str:
        out = []
        for name, worker in self.workers.items():
            out.append(f"--- worker {name} ({worker.log_path})\n{worker.log_tail(lines)}")
        for svc in (self.post, self.query):
            if svc is not None:
                out.append(f"--- {svc.module} ({svc.log_path})\n{svc.log_tail(lines)}")
        return "\n".join(out)
