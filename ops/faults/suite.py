"""The fault-injection suite: kill and pause real servers and workers under load, then check.

One run starts a private :class:`localenv.server_set.ServerSet` (own folder and ports: the shared
servers of ``./dev services up`` are never touched), a namespace on it, two workers (named,
so the supervisor logic of ``ops/supervise.py`` can hand a dead one's partitions over; in the
``split`` layout (``Config.layout``) each worker is a process per role, killed and started
together, and the hand-over is made in each role's group), the
Post and query services as child processes, a seeded :class:`ops.faults.load.Scenario`
(writes and reads through the HTTP API) and :class:`ops.faults.probes.Probes` (a probe
tweet on every partition every 0.5 s). Then, for each fault of the plan:

1. the load runs for a random while, then the fault is injected (a worker or a server
   SIGKILLed and started again at once, or a server SIGSTOPped and SIGCONTed later); what
   was in flight is recorded (consumer lag, HTTP requests waiting);
2. the probes time how long until every partition delivers again (for a worker: the
   partitions it owned; the target is 10 s);
3. the load stops; every partition must be owned again and consumer lag must reach zero
   (a partition still behind after the timeout is reported as stuck);
4. the reference (``policies.reference``, from the log) is compared with every user's
   timeline read through the product's reader (``diff_timelines``): 0 differences; every
   tweet answered 201 is on the log (so in its followers' timelines); no request got a
   5xx other than a 503 with a ``detail``.

``run_suite`` returns a report (a dict); ``python -m ops.faults`` writes it to
``bench/results/faults-<time>.json`` and ``.md``.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import random
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from localenv.host import REPO, STATE
from localenv.server_set import ServerSet
from ops.faults.cluster import Cluster
from ops.faults.load import Api, Scenario
from ops.faults.observe import Observer, partition_lag, wait_zero_lag
from ops.faults.plan import RESUME_TARGET_S, Config, Fault, plan
from ops.faults.probes import Probes, pick_pairs
from ops.group import GroupWatch
from ops.supervise import RESTART_DELAY_S, hand_over
from ops.verify import read_log
from policies.reference import ReferenceModel
from settings import unthrottled

log = logging.getLogger("ops.faults")


# --- the private servers, one set per checkout ------------------------------------------------


def server_set() -> tuple[ServerSet, Path]:
    """This checkout's private server set: folder ``.state/faults/<checkout digest>``, ports
    from a block derived from the digest (the first free block from there)."""
    digest = hashlib.sha1(str(REPO).encode()).hexdigest()[:8]
    state = STATE / "faults" / digest
    lock = state / "run" / "suite.lock"
    start = 29100 + (int(digest, 16) % 40) * 10
    existing = state / "run" / "base-port"
    base = None
    if existing.exists():
        base = int(existing.read_text())
        servers = ServerSet(state, base)
        if not any(svc.our_pid() for svc in servers.services()) and not ServerSet.ports_free(base):
            base = None  # our servers are gone and someone else has the ports now
    if base is None:
        base = ServerSet.free_base_port(start)
    state.joinpath("run").mkdir(parents=True, exist_ok=True)
    existing.write_text(str(base))
    return ServerSet(state, base), lock


@contextlib.contextmanager
def exclusive(lock: Path):
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another fault suite of this checkout is running ({lock})") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the suite ---------------------------------------------------------------------------------


class Suite:
    def __init__(self, config: Config, servers: ServerSet, workdir: Path, echo: Callable[[str], None]) -> None:
        self.config = config
        self.servers = servers
        self.workdir = workdir
        self.echo = echo
        self.rng = random.Random(config.seed)
        self.cluster = Cluster(
            servers, workdir, namespace="faults", workers=2, worker_layout=config.layout,
            celebrity_threshold=20, celebrity_hysteresis=5, timeline_cap=60, backfill_limit=25,
            **unthrottled(),  # one address drives every user: the abuse limits would refuse it
        )
        self.settings = self.cluster.settings
        self.api: Api | None = None
        self.scenario: Scenario | None = None
        self.probes: Probes | None = None
        self.observer = Observer(self.settings)
        self.watches: list[GroupWatch] = []  # one per role's group (Cluster.role_settings)
        self.records: list[dict[str, Any]] = []
        self.probe_users: dict[int, Any] = {}
        self.probe_accepted: dict[int, int] = {}  # probe tweet id -> author, every 201

    # --- set-up --------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        began = time.monotonic()
        await self.cluster.provision()
        self.cluster.start_workers()
        await self.cluster.start_services()
        owned = await self.cluster.wait_members(2, timeout=180)
        # What ops/supervise.py keeps, for each role's group (a process of each role dies with a worker).
        self.watches = [await GroupWatch(s).start() for s in self.cluster.role_settings()]
        self.api = Api(self.cluster.post.url, self.cluster.query.url)
        self.scenario = Scenario(self.api, self.config.seed, users=self.config.users, threshold=20, hysteresis=5)
        await self.scenario.setup()
        await self._probe_pairs()
        self.probes = Probes(self.pairs, self._post_probe, self.observer.newest, interval=0.5)
        took = round(time.monotonic() - began, 1)
        self.echo(f"set up in {took}s: {len(self.scenario.people)} users, workers {owned}")
        return {"setup_s": took, "assignment": {k: sorted(v) for k, v in owned.items()}}

    async def _probe_pairs(self) -> None:
        """Sign up probe users until every partition has an author and a follower."""
        assert self.scenario is not None
        candidates: list[int] = []
        for _ in range(200):
            user = await self.scenario.signup("probe")
            assert user is not None, "could not sign up probe users"
            self.probe_users[user.user_id] = user
            candidates.append(user.user_id)
            try:
                self.pairs = pick_pairs(candidates, self.settings.topic_partitions)
                break
            except ValueError:
                continue
        for author, follower in self.pairs.values():
            resp = await self.api.request(self.api.post, "follow", "POST", f"/v1/users/{follower}/following",
                                          json={"target_user_id": str(author)},
                                          headers=self.probe_users[follower].auth)
            assert resp is not None and resp.status_code == 200, resp and resp.text

    async def _post_probe(self, author: int, text: str) -> int | None:
        resp = await self.api.request(self.api.post, "probe", "POST", "/v1/tweets", json={"text": text},
                                      headers=self.probe_users[author].auth)
        if resp is not None and resp.status_code == 201:
            tweet_id = int(resp.json()["tweet_id"])
            self.probe_accepted[tweet_id] = author
            return tweet_id
        return None

    # --- one fault -------------------------------------------------------------------------
    async def cycle(self, index: int, fault: Fault) -> dict[str, Any]:
        cfg = self.config
        rec: dict[str, Any] = {"index": index, "fault": fault.name, "kind": fault.kind, "target": fault.target}
        began = time.monotonic()
        stop = asyncio.Event()
        load = asyncio.create_task(self.scenario.run(stop, writes_per_s=cfg.writes_per_s, reads_per_s=cfg.reads_per_s))
        self.probes.start()
        try:
            await asyncio.sleep(self.rng.uniform(*cfg.warm_s))  # a random moment
            try:
                rec["in_flight_events"] = sum((await asyncio.wait_for(partition_lag(self.settings), 5.0)).values())
            except Exception:  # noqa: BLE001
                rec["in_flight_events"] = None
            rec["in_flight_requests"] = self.api.in_flight
            owners_before = (await self.cluster.assignment())[1] if fault.kind == "worker_kill" else {}
            t0 = time.monotonic()
            rec.update(await self.inject(fault, t0))
            resumed = await self.probes.wait_resumed(t0, cfg.resume_timeout_s)
            rec["resumed_s_by_partition"] = resumed
            watched = owners_before.get(fault.target) if fault.kind == "worker_kill" else None
            focus = {p: resumed[p] for p in (watched or resumed)}
            rec["resume_partitions"] = sorted(focus)
            rec["resumed_s"] = None if any(v is None for v in focus.values()) else max(focus.values())
            await asyncio.sleep(cfg.after_s)
        finally:
            stop.set()
            await load
            await self.probes.stop()
        quiet = time.monotonic()
        rec["load_s"] = round(quiet - began, 1)
        try:
            await self.cluster.wait_members(2, timeout=120)
            rec["lag_zero_after_s"], _ = await wait_zero_lag(self.settings, cfg.caught_up_timeout_s,
                                                             self.cluster.check_workers)
            rec["stuck"] = {}
        except TimeoutError as exc:
            rec["lag_zero_after_s"] = None
            rec["stuck"] = str(exc)
        rec.update(await self.check())
        rec["http"] = self.api.summary(began, time.monotonic())
        bad = self.api.bad_calls(began, time.monotonic())
        rec["bad_responses"] = [asdict(c) for c in bad[:10]]
        rec["bad_response_count"] = len(bad)
        rec["duration_s"] = round(time.monotonic() - began, 1)
        rec["ok"] = self.cycle_ok(rec)
        return rec

    async def inject(self, fault: Fault, t0: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if fault.kind == "worker_kill":
            pid = self.cluster.kill_worker(fault.target)
            # What ops/supervise.py does: hand the partitions over at once, then restart.
            handovers = await asyncio.gather(*(hand_over(w.settings, fault.target, watch=w, died_at=t0)
                                               for w in self.watches))
            await asyncio.sleep(RESTART_DELAY_S)
            self.cluster.start_worker(fault.target)
            out.update(pid=pid, member_removed_after_s=latest(h.removed_after_s for h in handovers),
                       group_settled_after_s=latest(h.settled_after_s for h in handovers),
                       restarted_after_s=round(time.monotonic() - t0, 2))
        elif fault.kind == "server_kill":
            pid = await asyncio.to_thread(self.servers.kill, fault.target)
            killed = time.monotonic()
            outcome = await asyncio.to_thread(self.servers.start, fault.target)
            out.update(pid=pid, kill_s=round(killed - t0, 2), server_back_after_s=round(time.monotonic() - t0, 2),
                       restart=outcome.detail)
        elif fault.kind == "server_pause":
            pid = self.servers.pause(fault.target)
            await asyncio.sleep(fault.pause_s)
            self.servers.resume(fault.target)
            out.update(pid=pid, server_back_after_s=round(time.monotonic() - t0, 2))
        else:
            raise ValueError(fault.kind)
        self.echo(f"  injected {fault.name} ({fault.target}): {out}")
        return out

    async def check(self) -> dict[str, Any]:
        """The reference from the log vs every user's timeline through the reader."""
        from tests.integration.pipeline_harness import diff_timelines, reader_for

        events = await read_log(self.settings)
        model = ReferenceModel(validate=False)
        for event in events:
            model.apply(event)
        expected = model.home_timelines()
        logged = {e.tweet_id for e in events if getattr(e, "TYPE", "") == "tweet_posted"}
        accepted = {**self.scenario.accepted, **self.probe_accepted}
        missing = sorted(t for t in accepted if t not in logged)
        # Every 201 is in each follower's expected timeline unless its author deleted it.
        live = {t for t, a in accepted.items() if t in logged}
        followers: dict[int, list[int]] = {}
        for user in expected:
            for followee in model.following(user):
                followers.setdefault(followee, []).append(user)
        deleted = {(e.tweet_id, e.author_id) for e in events if getattr(e, "TYPE", "") == "tweet_deleted"}
        not_expected = [t for t in live if (t, accepted[t]) not in deleted
                        and any(t not in set(expected[f]) for f in followers.get(accepted[t], ()))]
        async with reader_for(self.settings) as reader:
            diffs = await diff_timelines(reader, expected)
        return {
            "users_checked": len(expected),
            "timeline_entries": sum(len(v) for v in expected.values()),
            "differences": len(diffs),
            "difference_sample": {str(k): v for k, v in list(diffs.items())[:3]},
            "accepted_tweets": len(accepted),
            "accepted_missing_from_log": len(missing),
            "accepted_missing_sample": missing[:5],
            "accepted_not_in_reference": len(not_expected),
        }

    @staticmethod
    def cycle_ok(rec: dict[str, Any]) -> bool:
        ok = (rec["differences"] == 0 and rec["accepted_missing_from_log"] == 0
              and rec["accepted_not_in_reference"] == 0 and not rec["stuck"]
              and rec["bad_response_count"] == 0 and rec.get("resumed_s") is not None)
        if rec["kind"] == "worker_kill":
            ok = ok and rec["resumed_s"] <= RESUME_TARGET_S
        return ok

    async def stop(self) -> None:
        for watch in self.watches:
            await watch.stop()
        if self.api is not None:
            await self.api.close()
        await asyncio.to_thread(self.cluster.stop)
        self.observer.close()


async def run_suite(config: Config, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a plan end to end; the private servers are stopped at the end unless
    ``config.keep_servers``. Returns the report (``report["ok"]``)."""
    faults = plan(config.plan)
    servers, lock = server_set()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {"plan": config.plan, "timestamp": stamp, "config": asdict(config),
                              "faults_planned": [f.name for f in faults], "cycles": []}
    began = time.monotonic()
    with exclusive(lock):
        t = time.monotonic()
        outcomes = await asyncio.to_thread(servers.up, echo)
        report["servers"] = {"state": str(servers.state), "base_port": servers.base_port,
                             "up_s": round(time.monotonic() - t, 1), "outcomes": [o.line() for o in outcomes]}
        workdir = Path(tempfile.mkdtemp(prefix="faults-"))
        suite = Suite(config, servers, workdir, echo)
        report["namespace"] = suite.settings.app_id
        try:
            report["setup"] = await suite.start()
            for i, fault in enumerate(faults):
                echo(f"[{i + 1}/{len(faults)}] {fault.name} ({fault.target})")
                try:
                    rec = await suite.cycle(i, fault)
                except Exception as exc:  # noqa: BLE001 - recorded; the suite stops here
                    rec = {"index": i, "fault": fault.name, "kind": fault.kind, "target": fault.target,
                           "ok": False, "error": repr(exc), "traceback": traceback.format_exc()[-3000:],
                           "logs": suite.cluster.logs(40)}
                    report["cycles"].append(rec)
                    echo(f"  FAILED: {exc!r}")
                    break
                report["cycles"].append(rec)
                echo("  " + one_line(rec))
        finally:
            report["probe_latency_s"] = probe_latency(suite)
            report["scenario"] = scenario_summary(suite)
            report["http_total"] = suite.api.summary() if suite.api else {}
            report["bad_responses_total"] = [asdict(c) for c in suite.api.bad_calls()[:20]] if suite.api else []
            await suite.stop()
            failed = not all(c.get("ok") for c in report["cycles"])
            if failed and config.keep_servers:
                report["cleanup"] = {"kept for inspection": suite.settings.app_id,
                                     "settings": {k: str(v) for k, v in asdict(suite.settings).items()}}
            else:
                try:
                    report["cleanup"] = await asyncio.wait_for(suite.cluster.drop(), 120)
                except Exception as exc:  # noqa: BLE001
                    report["cleanup"] = {"error": repr(exc)}
            if not config.keep_servers:
                await asyncio.to_thread(servers.down, echo)
    report["duration_s"] = round(time.monotonic() - began, 1)
    report["ok"] = bool(report["cycles"]) and len(report["cycles"]) == len(faults) and all(
        c.get("ok") for c in report["cycles"])
    return report


def latest(times: Iterable[float | None]) -> float | None:
    """The last of a fault's times over the role groups (None if any did not happen)."""
    times = list(times)
    return None if not times or any(t is None for t in times) else max(times)


def one_line(rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f"error {rec['error']}"
    return (f"{'ok' if rec['ok'] else 'FAILED'}: in flight {rec.get('in_flight_events')} events / "
            f"{rec.get('in_flight_requests')} requests; deliveries resumed after {rec.get('resumed_s')} s "
            f"(partitions {rec.get('resume_partitions')}); lag 0 {rec.get('lag_zero_after_s')} s after the load "
            f"stopped; {rec['differences']} differences in {rec['users_checked']} users; "
            f"{rec['accepted_missing_from_log']} accepted tweets missing; {rec['bad_response_count']} bad answers "
            f"of {rec['http']['requests']} ({rec['http']['by_status']})" + (f"; STUCK {rec['stuck']}" if rec["stuck"] else ""))


def probe_latency(suite: Suite) -> dict[str, Any]:
    if suite.probes is None:
        return {}
    lat = sorted(suite.probes.log.seen[t] - at for t, (_p, at) in suite.probes.log.posted.items()
                 if t in suite.probes.log.seen)
    if not lat:
        return {}
    return {"count": len(lat), "p50": round(statistics.median(lat), 3),
            "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3), "max": round(lat[-1], 3),
            "failed_posts": suite.probes.log.failed_posts}


def scenario_summary(suite: Suite) -> dict[str, Any]:
    s = suite.scenario
    if s is None:
        return {}
    return {"users": len(s.people), "probe_users": len(suite.probe_users), "steps": s.steps,
            "tweets_accepted": len(s.accepted), "probe_tweets_accepted": len(suite.probe_accepted),
            "deletes_accepted": len(s.deleted),
            "celebrity_demoted": s.demoted, "celebrity_promoted_again": s.promoted_again,
            "tweets_with_unknown_outcome": s.unknown_outcome,
            "verdicts": suite.api.summary()["by_verdict"] if suite.api else {}}


__all__ = ["run_suite", "server_set"]
