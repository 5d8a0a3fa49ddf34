"""Host plumbing for the local servers (``localenv``): state folders, packages, Java, Maven, processes.

Everything the local servers need is installed from the machine's ordinary package
sources (Debian packages via apt-get, jars via Maven Central) and kept under the
git-ignored ``.state/`` folder (``TL_STATE_DIR`` overrides it).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("TL_STATE_DIR") or REPO / ".state").resolve()
JARS = STATE / "jars"  # cached downloads: survive `reset`
LOGS = STATE / "logs"
RUN = STATE / "run"  # pid files


class HostError(RuntimeError):
    """A prerequisite could not be installed or a command failed."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing output; raise HostError with its tail on failure."""
    proc = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip().splitlines()[-40:]
        raise HostError(
            f"command failed ({proc.returncode}): {' '.join(map(str, argv))}\n" + "\n".join(output)
        )
    return proc


def run_retrying(argv: Sequence[str], attempts: int = 3, **kwargs) -> subprocess.CompletedProcess:
    """run(), retried with a pause: registry downloads fail transiently now and then."""
    for attempt in range(1, attempts + 1):
        try:
            return run(argv, **kwargs)
        except HostError as exc:
            if attempt == attempts:
                raise
            log(f"{exc}\nretrying ({attempt}/{attempts - 1}) ...")
            time.sleep(5 * attempt)
    raise AssertionError("unreachable")


# --- Debian packages ----------------------------------------------------------------

_apt_lock = threading.Lock()
_apt_updated = False
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def apt_install(*packages: str) -> None:
    """``apt-get install -y`` packages, non-interactively, without starting their services.

    The Debian packages of redis and postgresql would otherwise start the machine's own
    server on the very ports we want; a temporary ``policy-rc.d`` (exit 101) forbids it.
    """
    global _apt_updated
    if os.geteuid() != 0:
        raise HostError(f"missing {', '.join(packages)}: install them (needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}
    with _apt_lock:
        log(f"installing {' '.join(packages)} (apt-get) ...")
        if not _apt_updated:
            run_retrying(["apt-get", "update", "-q"], env=env, timeout=900)
            _apt_updated = True
        added_policy = not POLICY_RC_D.exists()
        if added_policy:
            POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC_D.chmod(0o755)
        try:
            run_retrying(
                ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                 "-o", "DPkg::Lock::Timeout=600",
                 "-o", "Dpkg::Options::=--force-confdef",
                 "-o", "Dpkg::Options::=--force-confold", *packages],
                env=env,
                timeout=1800,
            )
        finally:
            if added_policy:
                POLICY_RC_D.unlink(missing_ok=True)


def require_binary(path_or_name: str, package: str) -> str:
    """Path of an executable, installing its Debian package when it is absent."""
    found = _which(path_or_name)
    if not found:
        apt_install(package)
        found = _which(path_or_name)
    if not found:
        raise HostError(f"{path_or_name} not found even after installing {package}")
    return found


def _which(path_or_name: str) -> str | None:
    if os.sep in path_or_name:
        return path_or_name if os.access(path_or_name, os.X_OK) else None
    return shutil.which(path_or_name)


# --- Java 17 and Maven ----------------------------------------------------------------

_java_lock = threading.Lock()
_java17: Path | None = None


def java17_home() -> Path:
    """JAVA_HOME of a Java 17 runtime (Cassandra 5.0 supports 11 and 17, not newer)."""
    global _java17
    with _java_lock:
        if _java17 is None:
            _java17 = _find_java17()
            if _java17 is None:
                apt_install("openjdk-17-jre-headless")
                _java17 = _find_java17()
            if _java17 is None:
                raise HostError("no Java 17 found (looked in TL_JAVA17_HOME, JAVA_HOME, /usr/lib/jvm)")
        return _java17


def _find_java17() -> Path | None:
    candidates = [os.environ.get("TL_JAVA17_HOME"), os.environ.get("JAVA_HOME")]
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*17*"))
    java_on_path = shutil.which("java")
    if java_on_path:
        candidates.append(str(Path(os.path.realpath(java_on_path)).parent.parent))
    for home in filter(None, candidates):
        if _java_major(Path(home)) == 17:
            return Path(home).resolve()
    return None


def _java_major(home: Path) -> int | None:
    java = home / "bin" / "java"
    if not os.access(java, os.X_OK):
        return None
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else None


def java17() -> str:
    return str(java17_home() / "bin" / "java")


_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by localenv/host.py: the jars of one local server, fetched from Maven Central. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.timeline.ops</groupId>
  <artifactId>{name}-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""
_DEPENDENCY = (
    "    <dependency><groupId>{}</groupId><artifactId>{}</artifactId>"
    "<version>{}</version></dependency>"
)


def fetch_jars(name: str, coordinates: Iterable[str]) -> Path:
    """Copy the runtime jars of Maven ``group:artifact:version`` coordinates to
    ``.state/jars/<name>/lib`` (cached: skipped when the same set is already there)."""
    coordinates = list(coordinates)
    folder = JARS / name
    lib = folder / "lib"
    stamp = folder / "complete.json"
    if stamp.exists() and json.loads(stamp.read_text()) == coordinates and any(lib.glob("*.jar")):
        return lib
    mvn = require_binary("mvn", "maven")
    java17_home()  # Maven itself runs on it
    log(f"fetching {name} jars (mvn dependency:copy-dependencies) ...")
    folder.mkdir(parents=True, exist_ok=True)
    dependencies = "\n".join(_DEPENDENCY.format(*c.split(":")) for c in coordinates)
    (folder / "pom.xml").write_text(_POM.format(name=name, dependencies=dependencies))
    shutil.rmtree(lib, ignore_errors=True)
    run_retrying(
        [mvn, "-B", "-q", "-f", str(folder / "pom.xml"),
         "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
         f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
        env={**os.environ, "JAVA_HOME": str(java17_home())},
        timeout=1800,
    )
    stamp.write_text(json.dumps(coordinates))
    return lib


def find_jar(lib: Path, prefix: str) -> Path:
    matches = sorted(lib.glob(f"{prefix}-[0-9]*.jar"))
    if not matches:
        raise HostError(f"no {prefix}-*.jar in {lib}")
    return matches[-1]


# --- detached processes ----------------------------------------------------------------

# Started through a short-lived Python so the server is not our child: it outlives us,
# and no Popen object is left behind to warn about a still-running process.
_LAUNCHER = """
import ctypes, json, os, subprocess, sys
spec = json.loads(sys.stdin.read())
log = open(spec["log"], "ab")
if spec["timer_slack_ns"]:  # prctl(PR_SET_TIMERSLACK): the server inherits it (fork, exec)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(29, ctypes.c_ulong(spec["timer_slack_ns"]), 0, 0, 0) != 0:
        print(f"prctl(PR_SET_TIMERSLACK) failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr, flush=True)
        os._exit(3)
proc = subprocess.Popen(
    spec["argv"], cwd=spec["cwd"], env=spec["env"], stdin=subprocess.DEVNULL,
    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
    user=spec["user"], group=spec["user"], extra_groups=[] if spec["user"] else None,
)
try:  # an exit in the first moments is reported with its status, not as a pid
    rc = proc.wait(timeout=spec["grace"])
except subprocess.TimeoutExpired:
    print(proc.pid, flush=True)
    os._exit(0)
print(f"exited at once with status {rc}", file=sys.stderr, flush=True)
os._exit(3)
"""


def spawn(
    argv: Sequence[str],
    log_file: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    user: str | None = None,
    grace: float = 0.3,
    timer_slack_ns: int = 0,
) -> int:
    """Start a server in its own session, output appended to ``log_file``; returns its pid.

    ``timer_slack_ns``: the server's timer slack (every thread it starts inherits it;
    ``settings.server_timer_slack_us``), 0 for the kernel's default.
    A server that exits within ``grace`` seconds raises HostError with its exit status
    (a negative status is the signal that killed it)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [str(a) for a in argv],
        "log": str(log_file),
        "cwd": str(cwd),
        "env": env if env is not None else dict(os.environ),
        "user": user,
        "grace": grace,
        "timer_slack_ns": int(timer_slack_ns),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        raise HostError(f"could not start {argv[0]}: {proc.stderr.strip()}")
    return int(proc.stdout.strip())


def timer_slack_ns(pid: int) -> int | None:
    """The timer slack of ``pid``'s main thread (``/proc/<pid>/timerslack_ns``), None if unreadable."""
    try:
        return int(Path(f"/proc/{pid}/timerslack_ns").read_text())
    except (OSError, ValueError):
        return None


def proc_view(pid: int) -> tuple[str, bytes] | None:
    """``pid``'s state letter and raw command line (NUL-separated) from ``/proc``; None if gone."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state, (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and its command line or working directory contains ``marker``
    (guards against a recycled pid; redis rewrites its command line but chdirs to --dir)."""
    view = proc_view(pid)
    if view is None:
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    state, cmdline = view
    identity = cmdline.replace(b"\0", b" ").decode() + " " + cwd
    return marker in identity and state not in ("Z", "X")


def pid_mid_exec(pid: int) -> bool:
    """True if ``pid`` runs but shows no command line yet: a process in the middle of its exec
    (on a busy disk the new image loads in uninterruptible sleep, state D, for a while; pid_alive
    cannot recognize it then). Kernel threads show none either: a start-up wait that takes one
    for its server waits until its deadline, it never reports a server up that is not."""
    view = proc_view(pid)
    return view is not None and not view[1] and view[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from ``/proc``, parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo += children.get(child, [])
    return out


def signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``'s process group and to every process below it. A group alone
    is not enough for PostgreSQL: each of the postmaster's children calls ``setsid()``, so a
    SIGSTOP to the postmaster's group stops the postmaster only, and the backends go on
    answering the connections they hold. The parent first: a stopped postmaster starts no
    new child while its children are signalled."""
    os.killpg(pid, sig)
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)


def stop_pid(pid: int, marker: str, sig: int = signal.SIGTERM, timeout: float = 60.0) -> bool:
    """Signal a process and wait for it to exit; SIGKILL it after ``timeout``.

    Returns True for a clean exit, False if it had to be killed.
    """
    if not pid_alive(pid, marker):
        return True
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, marker):
            return True
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    for _ in range(50):
        if not pid_alive(pid, marker):
            break
        time.sleep(0.1)
    return False


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a child process, SIGKILL it if it is still there after ``timeout`` s; reap it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 40) -> list[str]:
    try:
        with open(path, errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except OSError:
        return []
