"""Run a worker and, when it dies, hand its partitions over at once, then start it again.

    python -m ops.supervise --name w1 [--restart-delay 5] [-- faust worker arguments]

A worker killed without leaving the group (SIGKILL, out of memory, a crash) holds its
partitions until the group coordinator misses its heartbeats for the session timeout
(``TL_BROKER_SESSION_TIMEOUT_S``); measured with two workers and probes on every
partition (``ops/faults``, ``docs/reliability.md``): 30 s session -> about 40 s without
deliveries on the dead worker's partitions; 6 s -> about 12 s; a restarted static member
(``TL_WORKER_STATIC_MEMBERSHIP``) gets its partitions back without a rebalance, but only
once the new process is up, 11-24 s on this machine. The supervisor sees the death at
once and removes the dead member from the group (``ops.group.remove_worker``, a LeaveGroup
on its behalf): the survivors take its partitions over in about 5 s. It then waits until
that rebalance is over and ``--restart-delay`` more (the survivors' table recovery, which
a new member joining would interrupt with another rebalance), and starts the worker again
with the same name and RocksDB folder.

The worker runs as ``python -m faust -A faust_app worker`` with ``TL_WORKER_NAME=<name>``
(its Kafka client id, by which its member is found). Exit codes: 0 (stopped on request)
and 78 (a systemic fault the worker refuses to work around, see ``agents/failures.py``)
are not restarted; the supervisor exits with the worker's code. SIGTERM/SIGINT are passed
on to the worker.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from cpu_priority import raise_priority
from ops.group import GroupWatch, describe, remove_worker
from settings import Settings, get_settings

log = logging.getLogger("ops.supervise")

NO_RESTART = (0, 78)
# After the hand-over: time for the survivors to recover the dead worker's tables and
# resume before the restarted worker joins (and the partitions move again).
RESTART_DELAY_S = 5.0


@dataclass
class Handover:
    """What the supervisor did after a worker's death, with times from the death."""

    removed: dict[str, str] = field(default_factory=dict)
    removed_after_s: float | None = None
    settled_after_s: float | None = None
    state: str = ""


async def hand_over(settings: Settings, name: str, *, watch: GroupWatch | None = None,
                    settle_timeout: float = 30.0, died_at: float | None = None) -> Handover:
    """Remove the dead worker ``name``'s member (through ``watch`` when given: one request),
    then wait until the group is stable (or empty) without it. Never raises: a Kafka that
    is down only delays the hand-over to the session timeout."""
    began = died_at if died_at is not None else time.monotonic()
    out = Handover()
    try:
        remove = watch.remove(name) if watch is not None else remove_worker(settings, name)
        out.removed = await asyncio.wait_for(remove, 10.0)
    except Exception as exc:  # noqa: BLE001 - best effort: the session timeout still applies
        out.removed = {"error": repr(exc)}
    out.removed_after_s = round(time.monotonic() - began, 2)
    end = time.monotonic() + settle_timeout
    prefix = f"{settings.worker_group}-{name}"
    while time.monotonic() < end:
        try:
            group = await asyncio.wait_for(describe(settings), 10.0)
            out.state = group.state
            gone = not any(m.client_id == prefix or m.member_id.startswith(f"{name}-") for m in group.members)
            if gone and group.state in ("Stable", "Empty"):
                break
        except Exception as exc:  # noqa: BLE001 - coordinator moving or down: look again
            out.state = repr(exc)
        await asyncio.sleep(0.2)
    out.settled_after_s = round(time.monotonic() - began, 2)
    return out


async def supervise(name: str, command: list[str], restart_delay: float) -> int:
    env = {**os.environ, "TL_WORKER_NAME": name}
    settings = get_settings().replace(worker_name=name)
    watch = await GroupWatch(settings).start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    child: asyncio.subprocess.Process | None = None

    def forward(signum: int) -> None:
        stopping.set()
        if child is not None and child.returncode is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, forward, sig)
    try:
        while True:
            child = await asyncio.create_subprocess_exec(*command, env=env)
            code = await child.wait()
            died_at = time.monotonic()
            if stopping.is_set() or code in NO_RESTART:
                log.info("worker %s exited with %d; not restarting", name, code)
                return code
            log.warning("worker %s exited with %d; handing its partitions over", name, code)
            done = await hand_over(settings, name, watch=watch, died_at=died_at)
            log.warning("worker %s: member removed after %.2fs (%s), group %s after %.2fs; restarting in %gs",
                        name, done.removed_after_s or 0, done.removed, done.state, done.settled_after_s or 0,
                        restart_delay)
            try:
                await asyncio.wait_for(stopping.wait(), restart_delay)
                return code
            except asyncio.TimeoutError:
                pass
    finally:
        await watch.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.supervise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the worker's stable name (TL_WORKER_NAME)")
    parser.add_argument("--restart-delay", type=float, default=RESTART_DELAY_S,
                        help=f"seconds between the hand-over and the restart (default {RESTART_DELAY_S:g})")
    parser.add_argument("worker_args", nargs="*", help="extra arguments for `faust worker` (after --)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = [sys.executable, "-m", "faust", "-A", "faust_app", "worker", *(args.worker_args or ["-l", "info"])]
    raise_priority(get_settings().session_nice)  # the worker runs in this session
    return asyncio.run(supervise(args.name, command, args.restart_delay))


if __name__ == "__main__":
    sys.exit(main())
