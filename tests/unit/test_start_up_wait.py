"""``localenv.services.wait_ready``: a server whose process is still loading its image (alive, no
command line yet) is waited for, not taken for exited and started a second time (a second copy
then lost the port to the first: a CI run on 2026-12-04, Prometheus under a busy disk)."""
from __future__ import annotations

import os
import time

from localenv.host import pid_mid_exec
from localenv.services import wait_ready


class SlowLoadingServer:
    """A Service as wait_ready uses it: its process shows no command line for ``loading`` polls,
    then answers; or, with ``gone``, its process is gone after those polls."""

    name, address, start_timeout, setup_seconds = "slow", "127.0.0.1:1", 5.0, 0.0

    def __init__(self, loading: int, gone: bool = False) -> None:
        self.loading, self.gone, self.polls, self.starts = loading, gone, 0, 0

    def ready(self, timeout: float) -> None:
        self.polls += 1
        if self.gone or self.polls <= self.loading:
            raise ConnectionRefusedError("not listening yet")

    def our_pid(self) -> int | None:
        return None if self.gone or self.polls <= self.loading else 4242

    def mid_exec(self) -> bool:
        return not self.gone and self.polls <= self.loading

    def describe_lost_pid(self) -> str:
        return "pid 4242 is gone"

    def start(self) -> None:
        self.starts += 1

    def log_tail(self) -> str:
        return ""


def test_a_server_still_loading_its_image_is_waited_for_not_started_again() -> None:
    server = SlowLoadingServer(loading=3)
    outcome = wait_ready(server, began=time.monotonic())  # type: ignore[arg-type]
    assert outcome.up, outcome.detail
    assert server.starts == 0, "started a second copy while the first was loading"
    assert "second attempt" not in outcome.detail


def test_a_server_that_exited_is_started_again_once() -> None:
    server = SlowLoadingServer(loading=0, gone=True)
    outcome = wait_ready(server, began=time.monotonic())  # type: ignore[arg-type]
    assert not outcome.up
    assert server.starts == 1
    assert "process exited during start-up" in outcome.detail


def kernel_thread() -> int:
    """A kernel thread's pid (PF_KTHREAD in its flags): alive with no command line, as a process
    in the middle of its exec shows itself."""
    for entry in sorted(os.listdir("/proc"), key=lambda name: (len(name), name)):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    flags = int(stat.read().rsplit(")", 1)[1].split()[6])
            except (OSError, IndexError, ValueError):
                continue
            if flags & 0x00200000:
                return int(entry)
    raise AssertionError("no kernel thread visible in /proc")


def test_mid_exec_means_alive_without_a_command_line() -> None:
    assert not pid_mid_exec(os.getpid()), "a running Python has a command line"
    assert pid_mid_exec(kernel_thread())
    assert not pid_mid_exec(2**22 + 12345), "no such pid"
