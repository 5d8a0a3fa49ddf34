"""The four local servers brought up and down together: ``up`` starts what is not running,
waits for each one in parallel and applies the schemas; ``status``, ``down``, ``reset``. The
command line is ``python -m localenv`` (``./dev services ...``); from code, ``ensure_up(settings)``
starts whatever is not up and applies the schemas.

Real servers on 127.0.0.1, installed from ordinary package sources on first use:
Kafka 3.9 (KRaft, one combined broker+controller) and Cassandra 5.0 as JVMs on Java 17
with jars from Maven Central, Redis and PostgreSQL 15 from Debian packages. State, logs
and pid files live in the git-ignored ``.state/`` folder. A server already answering on
a port (e.g. the machine's own PostgreSQL) is reused and never stopped by ``down``.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from localenv.cassandra_server import Cassandra
from localenv.host import LOGS, RUN, STATE, log
from localenv.kafka_server import Kafka
from localenv.postgres_server import Postgres
from localenv.redis_server import Redis
from localenv.service import Outcome, Service, ServicesError
from ops import schema
from settings import Settings, get_settings

SERVICE_TYPES: tuple[type[Service], ...] = (Cassandra, Kafka, Postgres, Redis)


def services(settings: Settings | None = None) -> list[Service]:
    """Cassandra first: it is the slowest to boot, so it starts while the others install."""
    settings = settings or get_settings()
    return [cls(settings) for cls in SERVICE_TYPES]


def start_or_reuse(svc: Service) -> Outcome | float:
    """Start ``svc`` unless it is already up. Returns a final Outcome, or the monotonic
    time the server was (or is being) started, for wait_ready to finish."""
    if svc.is_up():
        owner = "" if svc.our_pid() else ", not started by us"
        return Outcome(svc.name, svc.address, True, f"already running{owner}")
    if svc.our_pid() is not None:
        return time.monotonic()  # ours, still booting (e.g. an earlier `up` timed out)
    if svc.port_taken():
        svc.adopt_external()
        if svc.is_up(5.0):
            return Outcome(svc.name, svc.address, True, "already running, not started by us")
        return Outcome(svc.name, svc.address, False,
                       f"port {svc.port} is taken by a process that does not answer as {svc.name}")
    began = time.monotonic()
    try:
        svc.start()
    except Exception as exc:  # noqa: BLE001 - reported, with the log, as a failed service
        return Outcome(svc.name, svc.address, False, f"could not start: {exc}", svc.log_tail())
    return began


def wait_ready(svc: Service, began: float) -> Outcome:
    deadline = began + svc.start_timeout
    last_error: Exception | None = None
    retried = False
    while time.monotonic() < deadline:
        try:
            svc.ready(timeout=5.0)
            took = time.monotonic() - began
            setup = f", setup {svc.setup_seconds:.1f}s" if svc.setup_seconds >= 0.5 else ""
            again = " on the second attempt" if retried else ""
            return Outcome(svc.name, svc.address, True, f"started in {took:.1f}s{setup}{again}")
        except Exception as exc:  # noqa: BLE001 - not up yet
            last_error = exc
        # (A server still loading its image has no command line yet: not exited. Taken for
        # exited, it was started again and the second copy lost the port to the first.)
        if svc.our_pid() is None and not svc.mid_exec():
            gone = f"process exited during start-up ({svc.describe_lost_pid()})"
            if retried:
                return Outcome(svc.name, svc.address, False, gone, svc.log_tail())
            retried = True  # once: a server can lose a race for its port or a file
            logging.getLogger(__name__).warning("%s: %s; starting it again", svc.name, gone)
            time.sleep(1.0)
            try:
                svc.start()
            except Exception as exc:  # noqa: BLE001 - reported with the log
                return Outcome(svc.name, svc.address, False,
                               f"{gone}; could not start again: {exc}", svc.log_tail())
            deadline = time.monotonic() + svc.start_timeout
            continue
        time.sleep(0.25)
    return Outcome(svc.name, svc.address, False,
                   f"not answering after {svc.start_timeout:.0f}s: {last_error}", svc.log_tail())


def start_all(settings: Settings, svcs: list[Service] | None = None) -> list[Outcome]:
    """Start every server (or other ``Service``) that is not up; wait for each one in
    parallel from its start. Outcomes in the order of ``svcs``."""
    svcs = svcs or services(settings)
    outcomes: list[Outcome | Future[Outcome]] = []
    with ThreadPoolExecutor(max_workers=len(svcs)) as pool:
        for svc in svcs:
            result = start_or_reuse(svc)
            outcomes.append(result if isinstance(result, Outcome) else pool.submit(wait_ready, svc, result))
        return [o.result() if isinstance(o, Future) else o for o in outcomes]


def apply_schemas(settings: Settings, partitions: int | None = None, echo=print) -> None:
    """Cassandra tables, PostgreSQL tables and Kafka topics; one line per step."""
    began = time.monotonic()
    count = schema.apply_cassandra(settings)
    echo(f"{'schema':<10} ok    cassandra keyspace {settings.cassandra_keyspace}: "
         f"{count} statements ({time.monotonic() - began:.1f}s)")
    began = time.monotonic()
    schema.apply_postgres(settings)
    echo(f"{'schema':<10} ok    postgres ops/schema.sql ({time.monotonic() - began:.1f}s)")
    began = time.monotonic()
    topics = schema.create_topics(settings, partitions)
    summary = ", ".join(f"{name} {state}" for name, state in topics.items())
    echo(f"{'topics':<10} ok    {summary} ({time.monotonic() - began:.1f}s)")


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def failure_report(failed: list[Outcome]) -> str:
    parts = []
    for outcome in failed:
        parts.append(f"{outcome.name}: {outcome.detail}")
        if outcome.log_tail:
            parts.append(f"last lines of the {outcome.name} log:")
            parts.extend("    " + line for line in outcome.log_tail)
    return "\n".join(parts)


def raise_failed(outcomes: list) -> None:
    """ServicesError with every failed outcome's report, if any of ``outcomes`` (start_all's,
    a ring's; items that are not Outcomes are ignored) did not come up."""
    failed = [o for o in outcomes if isinstance(o, Outcome) and not o.up]
    if failed:
        raise ServicesError(failure_report(failed))


def drift_warnings(settings: Settings, outcomes: list[Outcome]) -> list[str]:
    """One line per server that was already running with another config than the one
    ``up`` would start it with; ``up`` does not restart a server others may be using."""
    lines = []
    for svc in services(settings):
        outcome = next(o for o in outcomes if o.name == svc.name)
        if not outcome.up or not outcome.detail.startswith("already running"):
            continue
        try:
            drift = svc.config_drift() + svc.slack_drift()
        except Exception as exc:  # noqa: BLE001 - a warning that could not be computed
            lines.append(f"{svc.name:<10} ?     could not compare its config: {exc!r}")
            continue
        if drift:
            remedy = ("restart it: ./dev services down && ./dev services up" if svc.our_pid()
                      else "it was not started by ./dev services: change its config by hand")
            lines.append(f"{svc.name:<10} STALE {svc.address:<15}  running with {'; '.join(drift)}; "
                         f"{remedy}")
    return lines


def up(settings: Settings | None = None, partitions: int | None = None,
       echo=print) -> list[Outcome]:
    """Start what is not running, wait for it, apply the schemas. Raises ServicesError."""
    settings = settings or get_settings()
    began = time.monotonic()
    with exclusive(RUN / "up.lock"):  # one `up` at a time (pytest-xdist workers, two shells)
        outcomes = start_all(settings)
        for outcome in outcomes:
            echo(outcome.line())
        for line in drift_warnings(settings, outcomes):
            echo(line)
        raise_failed(outcomes)
        apply_schemas(settings, partitions, echo)
    echo(f"all up in {time.monotonic() - began:.1f}s (state in {STATE})")
    return outcomes


def ensure_up(settings: Settings | None = None, partitions: int | None = None) -> None:
    """For code and tests: make sure every server answers and the schemas exist."""
    up(settings, partitions, echo=lambda line: log(line))


def status(settings: Settings | None = None) -> list[Outcome]:
    svcs = services(settings)

    def one(svc: Service) -> Outcome:
        pid = svc.our_pid()
        owner = f"pid {pid}" if pid else "not started by us"
        if svc.is_up(3.0):
            return Outcome(svc.name, svc.address, True, owner)
        return Outcome(svc.name, svc.address, False,
                       f"process {pid} runs but does not answer" if pid else "not running")

    with ThreadPoolExecutor(max_workers=len(svcs)) as pool:
        return list(pool.map(one, svcs))


def down(settings: Settings | None = None, echo=print) -> None:
    """Stop the servers this package started (in parallel); leave external ones alone."""
    svcs = services(settings)
    with ThreadPoolExecutor(max_workers=len(svcs)) as pool:
        for svc, result in zip(svcs, pool.map(lambda s: s.stop(), svcs)):
            echo(f"{svc.name:<10} {result}")


def reset(settings: Settings | None = None, echo=print) -> None:
    """down, then delete the servers' data, logs and pid files; downloaded jars stay."""
    down(settings, echo)
    settings = settings or get_settings()
    doomed = {path for svc in services(settings) for path in svc.data_dirs()}
    doomed |= {LOGS, RUN}
    faust = Path(settings.faust_datadir).resolve()  # local tables derived from Kafka's topics
    if faust.is_relative_to(STATE):
        doomed.add(faust)
    for path in sorted(doomed):
        if path.exists():
            shutil.rmtree(path)
            echo(f"{'reset':<10} removed {path}")
