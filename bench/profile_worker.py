"""A Faust worker whose main thread pyinstrument profiles between two signals.

    python -m bench.profile_worker <out-prefix> -A faust_app worker -l warn ...

Runs ``faust`` exactly as ``python -m faust ...`` would, in this process.
``SIGRTMIN+3`` starts the profiler, ``SIGRTMIN+4`` stops it and writes
``<out-prefix>.pyisession`` (loadable with ``pyinstrument --load``) and
``<out-prefix>.txt`` (the text tree). So the profile covers exactly the load
window the benchmark chose, not the worker's start-up or idle time before it.
(SIGUSR1/SIGUSR2 belong to mode's worker.) ``ProfiledWorker`` is
``localenv.worker.Worker`` running this module instead of ``faust``.

pyinstrument sees the main thread only, and most of the worker's CPU may be
elsewhere (the Cassandra driver's I/O thread, ``execute_concurrent`` in executor
threads). So between the same signals a small sampler thread also reads every
thread's CPU clock (``pthread_getcpuclockid``) every 2 ms and charges the CPU
each thread used since the last sample to the stack it is in now
(``<out-prefix>.threads.json``): a CPU profile of all threads, coarse but whole.
"""
from __future__ import annotations

import json
import re
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

from localenv.worker import Worker

START = signal.SIGRTMIN + 3
STOP = signal.SIGRTMIN + 4


class ThreadSampler(threading.Thread):
    """CPU time of every Python thread, charged to its current stack, every ``interval`` s."""

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(name="bench-thread-sampler", daemon=True)
        self.interval = interval
        self.halt = threading.Event()
        self.last: dict[int, float] = {}
        self.cpu: dict[str, float] = {}  # thread kind -> CPU s
        self.self_time: dict[tuple[str, str], float] = {}  # (kind, library of the leaf) -> CPU s
        self.functions: dict[tuple[str, str], float] = {}  # (kind, "file:function" of the leaf) -> CPU s
        self.began = 0.0
        self.wall = 0.0

    @staticmethod
    def kind(thread: threading.Thread) -> str:
        if thread is threading.main_thread():
            return "main thread (event loop)"
        name = re.sub(r"[_-]?\d+", "", thread.name)
        return f"thread {name}"

    def run(self) -> None:
        self.began = time.monotonic()
        me = threading.get_ident()
        while not self.halt.wait(self.interval):
            frames = sys._current_frames()  # noqa: SLF001 - the documented way to sample threads
            for thread in threading.enumerate():
                ident = thread.ident
                if ident is None or ident == me:
                    continue
                try:
                    now = time.clock_gettime(time.pthread_getcpuclockid(ident))
                except (OSError, ProcessLookupError):
                    continue
                used = now - self.last.get(ident, now)
                self.last[ident] = now
                frame = frames.get(ident)
                if used <= 0 or frame is None:
                    continue
                kind = self.kind(thread)
                code = frame.f_code
                leaf = (code.co_name, code.co_filename)
                lib = _library(leaf[0], leaf[1])
                self.cpu[kind] = self.cpu.get(kind, 0.0) + used
                self.self_time[(kind, lib)] = self.self_time.get((kind, lib), 0.0) + used
                where = f"{code.co_filename.split('site-packages/')[-1].split('/work/main/')[-1]}:{code.co_name}"
                self.functions[(kind, where)] = self.functions.get((kind, where), 0.0) + used
        self.wall = time.monotonic() - self.began

    def report(self) -> dict:
        def rows(d: dict[tuple[str, str], float], kind: str, n: int) -> list[dict]:
            items = sorted(((k[1], v) for k, v in d.items() if k[0] == kind), key=lambda kv: -kv[1])[:n]
            return [{"what": w, "cpu_s": round(v, 2)} for w, v in items]

        return {
            "wall_s": round(self.wall, 2),
            "interval_s": self.interval,
            "cpu_s_by_thread": {k: round(v, 2) for k, v in sorted(self.cpu.items(), key=lambda kv: -kv[1])},
            "by_thread": {
                kind: {"cpu_s": round(total, 2), "by_library": rows(self.self_time, kind, 10),
                       "top_functions": rows(self.functions, kind, 10)}
                for kind, total in sorted(self.cpu.items(), key=lambda kv: -kv[1])
            },
        }


def main() -> None:
    from pyinstrument import Profiler
    from pyinstrument.renderers import ConsoleRenderer

    prefix = sys.argv[1]
    sys.argv = ["faust", *sys.argv[2:]]
    profiler = Profiler(interval=0.001, async_mode="disabled")
    sampler: list[ThreadSampler] = []

    def start(*_: object) -> None:
        if not profiler.is_running:
            profiler.start()
            sampler[:] = [ThreadSampler()]
            sampler[0].start()

    def stop(*_: object) -> None:
        if not profiler.is_running:
            return
        session = profiler.stop()
        if sampler:
            sampler[0].halt.set()
            sampler[0].join(5)
            Path(prefix + ".threads.json").write_text(json.dumps(sampler[0].report(), indent=1))
        session.save(prefix + ".pyisession")
        text = ConsoleRenderer(unicode=False, color=False, show_all=False, short_mode=False,
                               processor_options={"filter_threshold": 0.005}).render(session)
        Path(prefix + ".txt").write_text(text)
        Path(prefix + ".done").write_text("ok\n")

    signal.signal(START, start)
    signal.signal(STOP, stop)
    runpy.run_module("faust", run_name="__main__", alter_sys=True)


class ProfiledWorker(Worker):
    """``localenv.worker.Worker`` under this module; ``profile_start``/``profile_stop`` send the signals."""

    def __init__(self, settings, log_path: Path, prefix: Path, **kw) -> None:
        super().__init__(settings, log_path, **kw)
        self.prefix = prefix

    def launcher(self) -> list[str]:
        return ["-m", "bench.profile_worker", str(self.prefix)]

    @property
    def profiled(self):
        """The process profiled: the worker's last (stage 2's in the split layout)."""
        return list(self.procs.values())[-1]

    def profile_start(self) -> None:
        self.profiled.send_signal(START)

    def profile_stop(self, timeout: float = 60.0) -> bool:
        """Stop profiling; True once the report files are written."""
        done = Path(str(self.prefix) + ".done")
        done.unlink(missing_ok=True)  # a profile stopped earlier in the run left one
        self.profiled.send_signal(STOP)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if done.exists():
                return True
            time.sleep(0.2)
        return False



# --- reading a profile ------------------------------------------------------------------------

_APP_DIRS = ("agents/", "policies/", "sinks/", "tables/", "schemas/", "streams/", "api/", "post/", "faust_app.py", "settings.py")


def _frame(info: str) -> tuple[str, str]:
    ident = info.split("\x01", 1)[0]
    function, path, _line = (ident.split("\x00") + ["", ""])[:3]
    return function, path


def _library(function: str, path: str) -> str:
    """The group a frame's self time is charged to."""
    if path == "<built-in>":
        if function.startswith(("epoll.", "select.", "poll.")):
            return "idle (waiting in epoll)"
        if function.startswith("Rdict"):
            return "RocksDB (rocksdict)"
        if function.startswith("socket."):
            return "socket send/recv (syscalls)"
        return "builtins (C calls)"
    if "/site-packages/" in path:
        top = path.split("/site-packages/", 1)[1].split("/", 1)[0]
        names = {"faust": "faust", "mode": "mode (faust runtime)", "aiokafka": "aiokafka", "kafka": "aiokafka",
                 "cassandra": "cassandra-driver", "redis": "redis-py", "psycopg": "psycopg",
                 "psycopg_pool": "psycopg", "rocksdict": "RocksDB (rocksdict)", "orjson": "orjson"}
        return names.get(top, top)
    rel = path.split("/work/main/", 1)[-1]
    if rel.startswith(_APP_DIRS):
        return "application code (agents, policies, sinks, tables)"
    if "/asyncio/" in path or path.endswith(("selectors.py", "/selectors.py")):
        return "asyncio event loop"
    if "/logging/" in path:
        return "logging"
    return "other stdlib"


def summarize_session(path: str | Path, top: int = 15) -> dict:
    """Where the profiled main thread spent its wall time: by library (self time), by
    agent and background task (inclusive), and the costliest application functions."""
    from pyinstrument.session import Session

    session = Session.load(str(path))
    total = sum(t for _, t in session.frame_records) or 1.0
    by_lib: dict[str, float] = {}
    by_owner: dict[str, float] = {}
    app_incl: dict[str, float] = {}
    for stack, t in session.frame_records:
        frames = [_frame(f) for f in stack]
        lib = _library(*frames[-1])
        by_lib[lib] = by_lib.get(lib, 0.0) + t
        owner = "event loop (select, scheduling)"
        for i, (fn, p) in enumerate(frames):
            if fn == "_run" and p.endswith("asyncio/events.py"):
                rest = frames[i + 1:]
                app = next(((f, q) for f, q in rest if q.split("/work/main/", 1)[-1].startswith(("agents/",))), None)
                if app is not None and any(f == "_execute_actor" for f, _ in rest):
                    owner = f"agent {app[0]} ({app[1].split('/work/main/', 1)[-1]})"
                elif any(f == "_handle_pending" for f, _ in rest):
                    owner = "faust producer buffer (changelogs, sends)"
                elif any("aiokafka/producer" in q for _, q in rest):
                    owner = "aiokafka producer (sender)"
                elif any(f in ("_fetcher", "_drain_messages", "getmany") for f, _ in rest) or any(
                        "aiokafka/consumer" in q or "aiokafka/conn" in q for _, q in rest):
                    owner = "kafka consumer / connections"
                elif any(f == "_commit_handler" for f, _ in rest):
                    owner = "offset commits"
                elif any("faust/streams.py" in q or "faust/transport/conductor.py" in q for _, q in rest):
                    owner = "faust stream routing (conductor, streams)"
                elif rest:
                    f, q = rest[0]
                    owner = f"other callbacks ({f} {q.rsplit('/', 1)[-1]})"
                break
        by_owner[owner] = by_owner.get(owner, 0.0) + t
        seen = set()
        for fn, p in frames:
            rel = p.split("/work/main/", 1)[-1]
            if rel.startswith(_APP_DIRS):
                name = f"{rel}:{fn}"
                if name not in seen:
                    seen.add(name)
                    app_incl[name] = app_incl.get(name, 0.0) + t

    def table(d: dict[str, float], n: int) -> list[dict]:
        return [{"what": k, "s": round(v, 2), "share": round(v / total, 3)}
                for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    # Owners below 1% are folded into "other callbacks".
    owners = {}
    for k, v in by_owner.items():
        key = k if v / total >= 0.01 or not k.startswith("other callbacks") else "other callbacks (each < 1%)"
        owners[key] = owners.get(key, 0.0) + v
    return {
        "wall_s": round(session.duration, 2),
        "main_thread_cpu_s": round(session.cpu_time, 2),
        "samples": session.sample_count,
        "by_library_self_time": table(by_lib, 20),
        "by_task_inclusive": table(owners, 15),
        "top_application_functions_inclusive": table(app_incl, top),
    }


if __name__ == "__main__":
    main()
