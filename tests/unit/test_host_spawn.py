"""localenv.host.spawn: a server that dies at once is reported with its status, not as a pid;
a server runs with the timer slack of the settings, and a running one with another is reported."""

import dataclasses
import os
import signal
import time

import pytest

from localenv.host import HostError, pid_alive, spawn, stop_pid, timer_slack_ns
from localenv.service import Service
from settings import Settings, get_settings


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


def _spawn_sleeper(tmp_path, **kwargs):
    marker = str(tmp_path / "slack-marker")
    return marker, spawn(["sh", "-c", "sleep 30; :", marker], tmp_path / "server.log", cwd=tmp_path,
                         grace=0.1, **kwargs)


@pytest.mark.parametrize("slack_ns", [500_000, 0])
def test_the_server_runs_with_the_timer_slack_asked_for(tmp_path, slack_ns):
    own = timer_slack_ns(os.getpid())
    marker, pid = _spawn_sleeper(tmp_path, timer_slack_ns=slack_ns)
    try:
        # 0 leaves what the launcher had: this process's (Linux's default, 50 us, unless changed)
        assert timer_slack_ns(pid) == (slack_ns or own)
    finally:
        assert stop_pid(pid, marker, signal.SIGTERM, timeout=5.0)


def test_a_service_reports_a_timer_slack_other_than_its_settings(tmp_path):
    marker, pid = _spawn_sleeper(tmp_path, timer_slack_ns=200_000)

    class Sleeper(Service):
        name = "sleeper"

        @property
        def marker(self) -> str:
            return marker

    def sleeper(slack_us: int) -> Sleeper:
        return Sleeper(dataclasses.replace(get_settings(), server_timer_slack_us=slack_us), state=tmp_path)

    sleeper(500).run_dir.mkdir(parents=True)
    sleeper(500).pid_file.write_text(f"{pid}\n")
    try:
        assert sleeper(500).slack_drift() == ["timer slack 200 us (TL_SERVER_TIMER_SLACK_US is now 500)"]
        assert sleeper(200).slack_drift() == []
        assert sleeper(0).slack_drift() == []  # 0: the kernel's default, whatever it is
    finally:
        assert stop_pid(pid, marker, signal.SIGTERM, timeout=5.0)


def test_the_servers_timer_slack_is_half_a_millisecond_unless_set():
    assert Settings().server_timer_slack_us == 500
    assert Settings(server_timer_slack_us=0).server_timer_slack_us == 0
    with pytest.raises(ValueError, match="TL_SERVER_TIMER_SLACK_US must be >= 0"):
        Settings(server_timer_slack_us=-1)
