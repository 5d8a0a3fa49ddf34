"""The session-priority decision (cpu_priority.py): only a session leader changes its session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cpu_priority import plan, raise_priority, session_nice


def test_a_session_leader_with_autogroups_writes_its_nice() -> None:
    assert plan(-10, pid=7, sid=7, autogroup=True) == (True, "session (autogroup) nice -10")


@pytest.mark.parametrize("nice, pid, sid, autogroup, why", [
    (0, 7, 7, True, "TL_SESSION_NICE=0"),
    (-10, 7, 3, True, "not the leader of its session"),  # started from a shell: the shell's session
    (-10, 7, 7, False, "no /proc/self/autogroup"),
])
def test_no_write(nice: int, pid: int, sid: int, autogroup: bool, why: str) -> None:
    decided = plan(nice, pid=pid, sid=sid, autogroup=autogroup)
    assert not decided.write and why in decided.reason


def test_the_reasons_name_the_setting_they_come_from() -> None:
    assert "TL_HTTP_SESSION_NICE=0" in plan(0, pid=7, sid=7, autogroup=True, setting="TL_HTTP_SESSION_NICE").reason
    with pytest.raises(ValueError, match="TL_HTTP_SESSION_NICE must be"):
        plan(30, pid=7, sid=7, autogroup=True, setting="TL_HTTP_SESSION_NICE")


@pytest.mark.parametrize("nice", [-21, 20])
def test_out_of_range_is_a_configuration_error(nice: int) -> None:
    with pytest.raises(ValueError, match="-20..19"):
        plan(nice, pid=1, sid=1, autogroup=True)


def test_raise_priority_leaves_a_process_that_does_not_lead_its_session_alone(tmp_path: Path) -> None:
    path = tmp_path / "autogroup"
    path.write_text("/autogroup-1 nice 0\n")
    if os.getsid(0) == os.getpid():
        pytest.skip("the test process leads its session")  # pragma: no cover - pytest under a shell does not
    assert "not the leader" in raise_priority(-5, path=path)
    assert path.read_text() == "/autogroup-1 nice 0\n"


def test_session_nice_reads_the_autogroup_line() -> None:
    value = session_nice(os.getpid())
    assert value is None or -20 <= value <= 19
    assert session_nice(2**22 + 12345) is None  # no such process


def _child(*prefix: str) -> tuple[str, str, str]:
    """A child in a session of its own (as the launchers start the processes) that raises its
    priority to -3: what raise_priority said, its session's nice afterwards, and its stderr."""
    import subprocess
    import sys
    code = ("import os, cpu_priority; print(cpu_priority.raise_priority(-3)); "
            "print(cpu_priority.session_nice(os.getpid()))")
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         cwd=Path(__file__).resolve().parents[2], start_new_session=True, check=True)
    reason, nice = out.stdout.split("\n")[:2]
    return reason, nice, out.stderr


def test_a_process_started_in_its_own_session_sets_that_session() -> None:
    """The real thing, as the launchers start the processes."""
    reason, nice, _ = _child()
    if not Path("/proc/self/autogroup").exists():
        assert "no /proc/self/autogroup" in reason and nice == "None"
    elif reason.startswith("could not"):  # no CAP_SYS_NICE: said, and nothing changed
        assert "CAP_SYS_NICE" in reason and nice == "0"
    else:
        assert reason == "session (autogroup) nice -3" and nice == "-3"


def test_without_cap_sys_nice_it_says_so_and_changes_nothing() -> None:
    """The refusal path for real: the child runs without CAP_SYS_NICE (setpriv drops it from a
    root test run; any other user has none)."""
    import shutil
    drop = [] if os.geteuid() != 0 else [shutil.which("setpriv") or "setpriv", "--bounding-set=-sys_nice",
                                         "--inh-caps=-sys_nice"]
    reason, nice, stderr = _child(*drop)
    if not Path("/proc/self/autogroup").exists():  # a kernel without autogroups: nothing to refuse
        assert "no /proc/self/autogroup" in reason and nice == "None"
        return
    assert reason.startswith("could not set the session's nice to -3") and "CAP_SYS_NICE" in reason
    assert nice == "0"
    assert "TL_SESSION_NICE=0 runs without trying" in stderr  # the one warning line
