"""localenv.host.spawn: a server that dies at once is reported with its status, not as a pid."""

import os
import signal
import time

import pytest

from localenv.host import HostError, pid_alive, spawn, stop_pid


def test_an_immediate_exit_is_an_error_with_its_status(tmp_path):
    log = tmp_path / "server.log"
    with pytest.raises(HostError, match="exited at once with status 7"):
        spawn(["sh", "-c", "echo boom; exit 7"], log, cwd=tmp_path)
    assert "boom" in log.read_text()  # the output is kept for the operator


def test_a_running_server_gets_its_pid_and_outlives_the_launcher(tmp_path):
    marker = str(tmp_path / "marker-dir")
    pid = spawn(["sh", "-c", "sleep 30; :", marker], tmp_path / "server.log", cwd=tmp_path, grace=0.1)
    try:
        assert pid != os.getpid()
        assert pid_alive(pid, marker)
        assert not pid_alive(pid, str(tmp_path / "another-checkout"))
    finally:
        assert stop_pid(pid, marker, signal.SIGTERM, timeout=5.0)
    deadline = time.monotonic() + 5
    while pid_alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid, marker)
