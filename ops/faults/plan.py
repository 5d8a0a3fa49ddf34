"""What a fault-suite run does: its faults (the ``short`` and ``full`` plans, or an ad-hoc
list), its knobs (``Config``) and the target a worker's partitions must resume within."""
from __future__ import annotations

import os
from dataclasses import dataclass

RESUME_TARGET_S = float(os.environ.get("TL_FAULTS_RESUME_TARGET_S", "10"))


@dataclass(frozen=True)
class Fault:
    kind: str  # worker_kill | server_kill | server_pause
    target: str  # w1, w2 | kafka, cassandra, redis, postgres
    pause_s: float = 0.0

    @property
    def name(self) -> str:
        if self.kind == "worker_kill":
            return "worker SIGKILL"
        label = {"kafka": "Kafka", "cassandra": "Cassandra", "redis": "Redis", "postgres": "PostgreSQL"}[self.target]
        if self.kind == "server_kill":
            return f"{label} SIGKILL + restart" + (" (no persistence: data lost)" if self.target == "redis" else "")
        return f"{label} SIGSTOP {self.pause_s:g} s, SIGCONT"


def _workers(n: int) -> list[Fault]:
    return [Fault("worker_kill", "w1" if i % 2 == 0 else "w2") for i in range(n)]


def plan(name: str) -> list[Fault]:
    if name == "short":
        return [Fault("worker_kill", "w1"), Fault("server_kill", "redis"), Fault("worker_kill", "w2"),
                Fault("server_pause", "kafka", 5.0)]
    if name == "full":
        servers = [Fault("server_kill", s) for s in ("kafka", "cassandra", "redis", "postgres")]
        servers += [Fault("server_pause", s, 20.0) for s in ("kafka", "cassandra", "redis", "postgres")]
        workers = _workers(10)
        out: list[Fault] = []
        for i in range(max(len(servers), len(workers))):  # interleaved
            if i < len(workers):
                out.append(workers[i])
            if i < len(servers):
                out.append(servers[i])
        return out
    if ":" in name:  # ad hoc: "server_kill:cassandra,worker_kill:w1,server_pause:kafka:20"
        out = []
        for spec in name.split(","):
            kind, target, *pause = spec.split(":")
            if kind not in ("worker_kill", "server_kill", "server_pause"):
                raise ValueError(f"unknown fault kind {kind!r}")
            out.append(Fault(kind, target, float(pause[0]) if pause else (20.0 if kind == "server_pause" else 0.0)))
        return out
    raise ValueError(f"unknown plan {name!r} (short, full, or kind:target[:pause_s],...)")


@dataclass
class Config:
    plan: str = "short"
    seed: int = 11
    users: int = 60
    writes_per_s: float = 25.0
    reads_per_s: float = 15.0
    warm_s: tuple[float, float] = (3.0, 7.0)  # the random moment of injection, after the load starts
    after_s: float = 3.0  # load kept running once every partition delivers again
    resume_timeout_s: float = 120.0
    caught_up_timeout_s: float = 180.0
    keep_servers: bool = False
    layout: str = "one"  # TL_WORKER_LAYOUT of the workers: "one", or "split" (a process per role)
