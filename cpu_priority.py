"""The CPU priority of this service's long-running processes (the stream worker, its
supervisor, the HTTP services) against the servers they share a machine with.

Linux shares the CPUs fairly between *sessions* ("autogroups", ``kernel.sched_autogroup_enabled``,
on in most distributions' kernels), not between threads, and a plain ``nice`` orders only the
threads of one session. On a machine where the worker shares its cores with Kafka, Cassandra,
Redis and PostgreSQL (the local environment, a small deployment on one host), each server is a
session of its own and the worker's threads waited for a CPU about as long as they ran: 0.65-0.67 s
of run-queue wait per second against 0.66-0.69 s of CPU at 6,000-19,200 deliveries/s
(``/proc/<pid>/task/*/schedstat``, 2026-12-04), every wait a delay of a batch that the stores
were ready for.

:func:`raise_priority` sets the nice value of the process's own autogroup
(``/proc/self/autogroup``) to ``settings.session_nice`` (the HTTP services:
``settings.http_session_nice``, higher by default) when the process leads its session (every
launcher of this repository starts these processes in a session of their own, and
``ops.supervise`` leads the worker's), so a shell's session is never changed by a process
started from it. Where autogroups do not apply (processes in a cgroup of their own: systemd
services, containers) the write changes nothing; give the service ``CPUWeight=`` or CPU
requests there. A negative value needs CAP_SYS_NICE: without it the process says so once in
its log and runs on at its default priority.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)
AUTOGROUP = Path("/proc/self/autogroup")


class Plan(NamedTuple):
    write: bool
    reason: str


def plan(nice: int, *, pid: int, sid: int, autogroup: bool, setting: str = "TL_SESSION_NICE") -> Plan:
    """Whether to write ``nice`` (the value of ``setting``) into the process's autogroup, and why
    (or why not)."""
    if nice == 0:
        return Plan(False, f"{setting}=0: the default priority")
    if not -20 <= nice <= 19:
        raise ValueError(f"{setting} must be within -20..19, got {nice}")
    if pid != sid:
        return Plan(False, "not the leader of its session: its session's priority is not this process's to set")
    if not autogroup:
        return Plan(False, "no /proc/self/autogroup (a kernel without autogroups): the default priority")
    return Plan(True, f"session (autogroup) nice {nice}")


def raise_priority(nice: int, *, path: Path = AUTOGROUP, setting: str = "TL_SESSION_NICE") -> str:
    """Apply :func:`plan` to this process; returns what was done, for the log."""
    pid = os.getpid()
    decided = plan(nice, pid=pid, sid=os.getsid(0), autogroup=path.exists(), setting=setting)
    if not decided.write:
        log.debug("CPU priority unchanged: %s", decided.reason)
        return decided.reason
    try:
        path.write_text(f"{nice}\n")
    except OSError as exc:
        reason = f"could not set the session's nice to {nice} ({exc.strerror}; a negative value needs CAP_SYS_NICE)"
        log.warning("CPU priority unchanged: %s; %s=0 runs without trying", reason, setting)
        return reason
    log.info("CPU priority: %s", decided.reason)
    return decided.reason


def session_nice(pid: int) -> int | None:
    """The nice value of ``pid``'s autogroup (``/proc/<pid>/autogroup``: "/autogroup-N nice V"),
    None when unreadable."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None
