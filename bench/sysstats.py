"""The machine and CPU accounting for the benchmarks: /proc, nothing else.

* ``machine()``: cores, memory, CPU model, load - stated with every figure;
* ``ProcessSet``: named groups of processes (a pid, or a pid and all its
  descendants, e.g. PostgreSQL's postmaster and its backends, counting exited
  ones through their parent's ``cutime``) whose CPU is read before and after a phase;
* ``thread_cpu(pid)``: CPU seconds of a process's main thread and of its other threads;
* ``run_wait_seconds(pid)``: how long a process's threads were runnable but waiting for a CPU;
* ``system_cpu()``: busy and total jiffies of the whole machine, to show how much
  of it went to processes outside the benchmark (other people's tests).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: str) -> list[str] | None:
    try:
        raw = Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return raw.rsplit(")", 1)[1].split()


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    f = _stat_fields(f"/proc/{pid}/stat")
    return 0.0 if f is None else (int(f[11]) + int(f[12])) / TICK


def proc_cpu_with_children(pid: int) -> float:
    """utime + stime + cutime + cstime: also the CPU of children that exited and were reaped."""
    f = _stat_fields(f"/proc/{pid}/stat")
    return 0.0 if f is None else (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / TICK


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(f"/proc/{entry}/stat")
        if f is not None:
            out.setdefault(int(f[1]), []).append(int(entry))
    return out


def descendants(pid: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    kids = kids if kids is not None else children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's main thread and of all its other threads together.

    (Python does not name its threads at the OS level, so they cannot be told apart
    by name: the others are the Cassandra driver's I/O loop, executors and the like.)
    """
    out = {"main thread": 0.0, "other threads": 0.0}
    for tid, (_, cpu) in threads_now(pid).items():
        out["main thread" if tid == pid else "other threads"] += cpu
    return out


#: Cassandra's thread names (as the kernel keeps them: the first 15 characters) -> what they do.
#: Native-Transport, MutationStage and ReadStage are one shared pool (SEP) whose threads rename
#: themselves for the stage they serve at the moment, so they are one kind here.
CASSANDRA_THREADS = (
    ("CompactionExecu", "compaction"),
    ("Native-Transpor", "request stages"),
    ("MutationStage", "request stages"),
    ("ReadStage", "request stages"),
    ("CounterMutation", "request stages"),
    ("RequestResponse", "request stages"),
    ("PerDiskMemtable", "memtable flush"),
    ("MemtableFlushWr", "memtable flush"),
    ("MemtablePostFlu", "memtable flush"),
    ("MemtableReclaim", "memtable flush"),
    ("PERIODIC-COMMIT", "commit log"),
    ("COMMIT-LOG-ALLO", "commit log"),
    ("epollEventLoopG", "network"),
    ("GC Thread", "JVM GC"),
    ("G1 ", "JVM GC"),
    ("VM Thread", "JVM GC"),
    ("C1 CompilerThre", "JIT compiler"),
    ("C2 CompilerThre", "JIT compiler"),
)


def cassandra_thread_kind(name: str) -> str:
    """What a Cassandra thread does, from its name (``other`` when not listed)."""
    for prefix, kind in CASSANDRA_THREADS:
        if name.startswith(prefix):
            return kind
    return "other"


def threads_now(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of ``pid``: tid -> (its name now, its CPU seconds so far)."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        f = raw.rsplit(")", 1)[1].split()
        out[int(tid)] = (raw[raw.index("(") + 1:raw.rindex(")")], (int(f[11]) + int(f[12])) / TICK)
    return out


def run_wait_seconds(pid: int) -> float:
    """Time the threads of a process spent runnable but waiting for a CPU (schedstat, summed over
    the threads alive now): on a machine whose cores the servers share, the part of a latency
    that is the scheduler's, not the process's work."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def by_kind_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  kind_of: Any) -> dict[str, float]:
    """CPU per kind between two ``threads_now`` readings, each thread under the kind of its name
    at the second reading, largest first (threads that ended in between are not counted;
    threads that began count from 0)."""
    out: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        kind = kind_of(name)
        out[kind] = out.get(kind, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def system_cpu() -> tuple[float, float]:
    """(busy, total) seconds of all cores since boot."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    values = [int(v) for v in parts[:8]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values)
    return (total - idle) / TICK, total / TICK


def machine() -> dict:
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except FileNotFoundError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass
class ProcessSet:
    """Named process groups; ``tree`` groups include every descendant (looked up at each read)."""

    single: dict[str, int] = field(default_factory=dict)
    tree: dict[str, int] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        out = {name: proc_cpu(pid) for name, pid in self.single.items()}
        if self.tree:
            kids = children_map()
            for name, pid in self.tree.items():
                # Backends that exited meanwhile are in their parent's cutime/cstime.
                out[name] = sum(proc_cpu_with_children(p) for p in descendants(pid, kids))
        return out


@dataclass
class CpuWindow:
    """CPU used by each group, and by the whole machine, between ``start()`` and ``stop()``."""

    procs: ProcessSet
    threads_of: int | None = None  # a pid whose threads are reported too
    began: float = 0.0
    before: dict[str, float] = field(default_factory=dict)
    sys_before: tuple[float, float] = (0.0, 0.0)
    threads_before: dict[str, float] = field(default_factory=dict)
    cassandra_before: dict[int, tuple[str, float]] = field(default_factory=dict)
    result: dict = field(default_factory=dict)

    def start(self) -> "CpuWindow":
        self.began = time.monotonic()
        self.before = self.procs.read()
        self.sys_before = system_cpu()
        if self.threads_of:
            self.threads_before = thread_cpu(self.threads_of)
        if "cassandra" in self.procs.single:
            self.cassandra_before = threads_now(self.procs.single["cassandra"])
        return self

    def stop(self) -> dict:
        wall = time.monotonic() - self.began
        after = self.procs.read()
        busy1, total1 = system_cpu()
        used = {k: round(after.get(k, 0.0) - v, 2) for k, v in self.before.items()}
        busy = busy1 - self.sys_before[0]
        total = total1 - self.sys_before[1]
        self.result = {
            "wall_s": round(wall, 2),
            "cpu_s": used,
            "machine_busy_cpu_s": round(busy, 2),
            "machine_capacity_cpu_s": round(total, 2),
            "machine_busy_share": round(busy / total, 3) if total else None,
            "outside_these_processes_cpu_s": round(max(0.0, busy - sum(used.values())), 2),
        }
        if "cassandra" in self.procs.single:
            now_c = threads_now(self.procs.single["cassandra"])
            self.result["cassandra_threads_cpu_s"] = by_kind_delta(self.cassandra_before, now_c, cassandra_thread_kind)
        if self.threads_of:
            now = thread_cpu(self.threads_of)
            self.result["worker_threads_cpu_s"] = {
                k: round(v - self.threads_before.get(k, 0.0), 2)
                for k, v in sorted(now.items(), key=lambda kv: -kv[1])
                if v - self.threads_before.get(k, 0.0) >= 0.05
            }
        return self.result


def pid_listening_on(port: int) -> int | None:
    """The pid of the process with a listening TCP socket on ``port`` (any address), if visible."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                        inodes.add(parts[9])
        except (OSError, StopIteration):
            continue
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return int(pid)
            except OSError:
                continue
    return None


CASSANDRA_DURABILITY = ("commitlog_sync", "commitlog_sync_period", "paxos_variant")


def cassandra_durability(settings: Any) -> dict[str, str]:
    """How the running Cassandra acknowledges writes (its ``system_views.settings``): with
    ``commitlog_sync: batch`` every write group waits for an fsync, which sets the floor of
    the fanout lag and the write ceilings; the report names it beside the figures."""
    from ops.schema import cassandra_cluster

    cluster = cassandra_cluster(settings, connect_timeout=10.0)
    try:
        session = cluster.connect()
        rows = session.execute("SELECT name, value FROM system_views.settings")
        return {row.name: row.value for row in rows if row.name in CASSANDRA_DURABILITY}
    finally:
        cluster.shutdown()
