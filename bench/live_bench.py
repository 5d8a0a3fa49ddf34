"""Live streams (SSE) measured: idle streams held by one query-service process, its memory per
stream, and the latency from Kafka's ack of a tweet to its event on an open stream.

    python -m bench.live_bench [--streams 10000] [--probes 20] [--load-rate 20,50%] [--out bench/results/live.md]

One namespace of its own (``bench_<tag>``), a real worker (``localenv.worker.Worker``) and the
query service as a child process (``python -m query.service``: one process, as the goal is per
process). Steps:

1. ``--streams`` users with accounts, each a stream opened over a raw socket (this process
   holds the client ends); the service's RSS at 0, 1/4, 1/2 and all of them open: memory per
   stream is the slope.
2. ``--probes`` probe users each following one author of their own; with every stream still
   open, tweets of those authors, one at a time: Kafka ack -> the stage's notice on Redis
   pub/sub (published right after the timeline write; the bench subscribes to the probes'
   channels and takes the time the stage wrote in it) -> the ``tweet`` event on the probe's
   stream. The probes' streams are held by a client process of their own, in a session of its
   own (as a device is apart from the others) at the worker's session priority
   (``TL_SESSION_NICE``: on these shared cores a client at the default priority waited for a
   CPU behind the worker's), which stamps each event with the wall clock when it reads it:
   this process also reads every other open stream and sends the load, and its delays were
   part of the probes' times until 2026-12-04. Idle, then at each ``--load-rate``
   (a comma list: background tweets/s, or ``N%`` of ``--burst-deliveries``, the pipeline's
   burst capacity in deliveries/s, divided by the fanout) whose authors are followed by
   ``--load-fanout`` stream users each (their streams wake too), and ``--load-others`` users
   without a stream each (deliveries to timelines nobody watches: the pipeline's load at a
   point is the sum, as in the main benchmark, where few readers have a stream open; their
   timelines are not cached, so each of those deliveries is a Cassandra row). At each point, the CPU of the
   query service and of the worker per stream event (one tweet delivered to one open stream).
   The service's own histogram (``timeline_live_event_delay_seconds``: from a stage's notice,
   published right after its timeline write, to the tweet events written on a stream; every
   stream event, the background load's too), scraped around each point, says the same from
   inside the service, without this process's delays (it reads every open stream).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import orjson
from redis.asyncio import Redis

from api.auth import hash_token, new_token
from bench import stage_times
from bench.context import Publisher, bench_settings, log, provision
from bench.sysstats import run_wait_seconds
from cpu_priority import raise_priority
from localenv.worker import Worker
from ops.faults.cluster import ServiceProcess
from ops.lag import wait_caught_up
from ops.schema import drop_namespace
from policies.snowflake import SnowflakeGenerator
from policies.stream import decode_notice
from settings import get_settings
from sinks.redis_live import LiveChannels

RESULTS = Path(__file__).parent / "results"
DELAY = "timeline_live_event_delay_seconds"


class Unavailable(RuntimeError):
    """A 503 while opening a stream."""


class StreamClient:
    """One stream's client end over a raw socket: the ready event, then tweet events timed."""

    def __init__(self, port: int, user_id: int, token: str, *, clock: Callable[[], float] = time.perf_counter,
                 on_arrival: Callable[[int, float], None] | None = None) -> None:
        self.port, self.user_id, self.token = port, user_id, token
        self.clock, self.on_arrival = clock, on_arrival
        self.writer: asyncio.StreamWriter | None = None
        self.arrivals: dict[int, float] = {}
        self.task: asyncio.Task[None] | None = None
        self.retries = 0

    async def open(self, attempts: int = 5) -> None:
        """Open the stream; a 503 (a server busy, Retry-After: 1) is retried as a client would."""
        for attempt in range(attempts):
            try:
                return await self._open()
            except Unavailable:
                if attempt == attempts - 1:
                    raise
                self.retries += 1
                await asyncio.sleep(1.0)

    async def _open(self) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write((f"GET /v1/users/{self.user_id}/timelines/home/stream HTTP/1.1\r\n"
                           f"Host: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 503 " in head.split(b"\r\n", 1)[0]:
            self.writer.close()
            raise Unavailable(f"stream of {self.user_id}: {await reader.read(400)!r}")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"stream of {self.user_id}: {head[:200]!r} {await reader.read(400)!r}")
        buf = b""
        while b"event: ready" not in buf:
            buf += await reader.read(4096)
        self.task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            now = self.clock()
            for part in chunk.split(b"\n\n"):
                if b"event: tweet" in part:
                    data = part.split(b"data: ", 1)[1].split(b"\n", 1)[0]
                    tweet_id = int(orjson.loads(data)["tweet_id"])
                    self.arrivals[tweet_id] = now
                    if self.on_arrival is not None:
                        self.on_arrival(tweet_id, now)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()


class ProbeClients:
    """The probes' streams, held by a child process in a session of its own (``--probe-client``):
    it opens them, says ``ready``, then prints ``<tweet id> <epoch s>`` for every tweet event as it
    reads it. Its times are the wall clock, as is the stage's in a notice (one machine, one clock)."""

    def __init__(self, port: int, users: list[tuple[int, str]]) -> None:
        self.port, self.users = port, users
        self.arrivals: dict[int, float] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> "ProbeClients":
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.live_bench", "--probe-client", str(self.port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(self.users) + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=120)
        if line.strip() != b"ready":
            raise RuntimeError(f"probe client did not start: {line[:300]!r}")
        self.task = asyncio.get_running_loop().create_task(self._read(self.proc.stdout))
        return self

    async def _read(self, out: asyncio.StreamReader) -> None:
        while line := await out.readline():
            tweet_id, at = line.split()
            self.arrivals[int(tweet_id)] = float(at)

    def run_wait_seconds(self) -> float:
        """Its threads' time runnable but not running, so far (``bench.sysstats``)."""
        assert self.proc is not None
        return run_wait_seconds(self.proc.pid)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def probe_client(port: int) -> None:
    """The child of :class:`ProbeClients`: users (JSON ``[[id, token], ...]``) on stdin."""
    raise_priority(get_settings().session_nice)  # it leads its session (start_new_session)
    users = orjson.loads(sys.stdin.buffer.readline())

    def emit(tweet_id: int, at: float) -> None:
        sys.stdout.write(f"{tweet_id} {at:.6f}\n")
        sys.stdout.flush()

    clients = [StreamClient(port, uid, tok, clock=time.time, on_arrival=emit) for uid, tok in users]
    for c in clients:
        await c.open()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def make_users(settings: Any, n: int) -> list[tuple[int, str]]:
    import psycopg

    users = [(10**15 + i, new_token()) for i in range(n)]
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True,
                                                     **settings.postgres_kwargs()) as conn:
        async with conn.cursor() as cur:
            async with cur.copy("COPY users (user_id, handle, token_hash) FROM STDIN") as copy:
                for uid, token in users:
                    await copy.write_row((uid, f"live_{uid}", hash_token(token)))
    return users


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def probe_latency(settings: Any, pub: Publisher, probes: list[tuple[int, int]], arrivals: dict[int, float],
                        ids: SnowflakeGenerator, rounds: int, interval: float) -> dict[str, Any]:
    """Tweets of the probes' authors (``(user, author)`` pairs), one at a time, a round every
    ``interval`` s at most (so that a load point lasts ``rounds * interval`` s whatever the
    latency): ack, notice and event times, all wall clock. The notice's time is the one the stage
    wrote in it (right after its timeline write), not when this process read it; an event's is
    when the probe client read it (``arrivals``)."""
    redis = Redis.from_url(settings.redis_url)
    live = LiveChannels(redis, prefix=settings.redis_prefix)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(*(live.user(user) for user, _ in probes))
    notices: dict[int, float] = {}

    async def listen() -> None:
        while True:
            msg = await pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "message":
                notice = decode_notice(msg["data"])
                for tweet_id, _ in notice.added:
                    notices[tweet_id] = notice.sent_at or time.time()

    listener = asyncio.get_running_loop().create_task(listen())
    ack_to_notice, notice_to_event, ack_to_event = [], [], []
    try:
        for r in range(rounds):
            _, author = probes[r % len(probes)]
            round_began = time.perf_counter()
            tid = ids.next_id()
            fut = await pub.send({"type": "tweet_posted", "tweet_id": tid, "author_id": author,
                                  "text": f"probe {tid}", "created_at": int(time.time() * 1000)})
            await fut
            t_ack = time.time()
            end = time.perf_counter() + 10
            while tid not in arrivals and time.perf_counter() < end:
                await asyncio.sleep(0.001)
            if tid in arrivals and tid in notices:
                ack_to_notice.append((notices[tid] - t_ack) * 1000)
                notice_to_event.append((arrivals[tid] - notices[tid]) * 1000)
                ack_to_event.append((arrivals[tid] - t_ack) * 1000)
            await asyncio.sleep(max(0.05, interval - (time.perf_counter() - round_began)))
    finally:
        listener.cancel()
        await pubsub.aclose()
        await redis.aclose()

    def summary(xs: list[float]) -> dict[str, float]:
        return {"p50": round(statistics.median(xs), 1) if xs else float("nan"), "p99": round(pct(xs, 0.99), 1),
                "max": round(max(xs), 1) if xs else float("nan")}

    return {"rounds": rounds, "received": len(ack_to_event), "ack_to_notice_ms": summary(ack_to_notice),
            "notice_to_event_ms": summary(notice_to_event), "ack_to_event_ms": summary(ack_to_event)}


async def background_load(pub: Publisher, authors: list[int], rate: float, ids: SnowflakeGenerator,
                          stop: asyncio.Event) -> int:
    n = 0
    began = time.perf_counter()
    while not stop.is_set():
        due = began + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tid = ids.next_id()
        await pub.send({"type": "tweet_posted", "tweet_id": tid, "author_id": authors[n % len(authors)],
                        "text": f"load {tid}", "created_at": int(time.time() * 1000)})
        n += 1
    return n


def load_rate(spec: str, burst: float, fanout: int) -> float:
    """Background tweets/s of a ``--load-rate`` item: ``20`` (tweets/s) or ``50%`` (of the burst
    capacity in deliveries/s, each tweet being ``fanout`` deliveries: to streams and to others)."""
    spec = spec.strip()
    if spec.endswith("%"):
        return float(spec[:-1]) / 100 * burst / fanout
    return float(spec)


async def stream_namespace(workdir: str, name: str) -> tuple[Any, Path]:
    """A provisioned namespace of its own for a streams benchmark (every author pushed) and its
    folder: ``<workdir>/<name>-<tag>``."""
    tag = uuid.uuid4().hex[:8]
    path = Path(workdir) / f"{name}-{tag}"
    path.mkdir(parents=True, exist_ok=True)
    settings = bench_settings(get_settings(), tag, path, partitions=4, threshold=10**6, hysteresis=1)
    await provision(settings)
    return settings, path


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings, workdir = await stream_namespace(args.workdir, "live")
    result: dict[str, Any] = {"command": " ".join(["python -m bench.live_bench", *sys.argv[1:]]),
                              "streams": args.streams, "probes": args.probes,
                              "loadavg_at_start": [round(x, 1) for x in os.getloadavg()]}
    worker = Worker(settings, workdir / "worker.log").start()
    service = ServiceProcess("query.service", settings, workdir / "query.log").start()
    pub = await Publisher(settings).start()
    clients: list[StreamClient] = []
    probe_clients: ProbeClients | None = None
    ids = SnowflakeGenerator(worker_id=77)
    try:
        await service.wait_ready()
        port = service.port
        users = await make_users(settings, args.streams + args.probes)
        stream_users, probe_users = users[:args.streams], users[args.streams:]
        # Followers: each probe follows its own author; load authors are followed by stream users.
        load_authors = [2 * 10**15 + i for i in range(20)]
        follows = [{"type": "followed", "follower_id": uid, "followee_id": 3 * 10**15 + i, "at": 1}
                   for i, (uid, _) in enumerate(probe_users)]
        follows += [{"type": "followed", "follower_id": stream_users[(i * 97 + j) % len(stream_users)][0],
                     "followee_id": a, "at": 1}
                    for i, a in enumerate(load_authors) for j in range(args.load_fanout)]
        # ... and by users without a stream (no account needed: no activity record is active).
        follows += [{"type": "followed", "follower_id": 4 * 10**15 + i * args.load_others + j, "followee_id": a, "at": 1}
                    for i, a in enumerate(load_authors) for j in range(args.load_others)]
        for ev in follows:
            await pub.send(ev)
        await wait_caught_up(settings, timeout=300, check=worker.check)

        base = service.rss() or 0
        rss = [{"streams": 0, "rss_mb": round(base / 2**20, 1)}]
        log(f"query service RSS with no stream: {base / 2**20:.1f} MB")
        steps = sorted({args.streams // 4, args.streams // 2, args.streams})
        opened = 0
        began = time.perf_counter()
        for step in steps:
            todo = stream_users[opened:step]
            for i in range(0, len(todo), args.open_concurrency):
                batch = [StreamClient(port, uid, tok) for uid, tok in todo[i:i + args.open_concurrency]]
                await asyncio.gather(*(c.open() for c in batch))
                clients.extend(batch)
            opened = step
            await asyncio.sleep(2)
            now = service.rss() or 0
            rss.append({"streams": step, "rss_mb": round(now / 2**20, 1)})
            log(f"{step} streams open ({time.perf_counter() - began:.0f} s): RSS {now / 2**20:.1f} MB")
        result["open_seconds"] = round(time.perf_counter() - began, 1)
        result["open_retries_after_503"] = sum(c.retries for c in clients)
        result["rss"] = rss
        result["kb_per_stream"] = round((rss[-1]["rss_mb"] - rss[0]["rss_mb"]) * 1024 / max(1, args.streams), 1)

        probe_clients = await ProbeClients(port, probe_users).start()
        probes = [(uid, 3 * 10**15 + i) for i, (uid, _) in enumerate(probe_users)]
        arrivals = probe_clients.arrivals

        def cpu() -> tuple[float, ...]:
            q, ws = service.proc.pid, [p.pid for p in worker.procs.values()]  # a process per stage when split
            return (cpu_seconds(q), sum(map(cpu_seconds, ws)), time.perf_counter(), run_wait_seconds(q),
                    sum(map(run_wait_seconds, ws)), probe_clients.run_wait_seconds())

        async def delays() -> stage_times.Snapshot:
            return await asyncio.to_thread(stage_times.scrape, port, 5.0, {DELAY: ""})

        def account(point: dict[str, Any], before: tuple[float, ...], events: int) -> None:
            (q0, w0, t0, qw0, ww0, pw0), (q1, w1, t1, qw1, ww1, pw1) = before, cpu()
            point["probe_client_run_wait_ms_per_s"] = round((pw1 - pw0) * 1000 / (t1 - t0), 1)
            point["query_run_wait_ms_per_s"] = round((qw1 - qw0) * 1000 / (t1 - t0), 1)
            point["worker_run_wait_ms_per_s"] = round((ww1 - ww0) * 1000 / (t1 - t0), 1)
            point["wall_s"] = round(t1 - t0, 1)
            point["stream_events"] = events
            point["query_cpu_share"] = round((q1 - q0) / (t1 - t0), 2)
            point["worker_cpu_share"] = round((w1 - w0) / (t1 - t0), 2)
            point["query_cpu_ms_per_event"] = round((q1 - q0) * 1000 / max(1, events), 3)
            point["worker_cpu_ms_per_event"] = round((w1 - w0) * 1000 / max(1, events), 3)

        before, seen = cpu(), await delays()
        result["idle"] = await probe_latency(settings, pub, probes, arrivals, ids, args.rounds, args.probe_interval)
        account(result["idle"], before, result["idle"]["received"])
        result["idle"]["service_event_delay"] = stage_times.between(seen, await delays(), (DELAY, ""))
        log(f"idle: {result['idle']}")
        result["loads"] = []
        for spec in args.load_rate.split(","):
            rate = load_rate(spec, args.burst_deliveries, args.load_fanout + args.load_others)
            stop = asyncio.Event()
            sent0 = sum(len(c.arrivals) for c in clients)
            load = asyncio.get_running_loop().create_task(background_load(pub, load_authors, rate, ids, stop))
            await asyncio.sleep(3)
            before, events0, seen = cpu(), sum(len(c.arrivals) for c in clients), await delays()
            point = await probe_latency(settings, pub, probes, arrivals, ids, args.rounds, args.probe_interval)
            account(point, before, sum(len(c.arrivals) for c in clients) - events0 + point["received"])
            point["service_event_delay"] = stage_times.between(seen, await delays(), (DELAY, ""))
            stop.set()
            point["background_tweets"] = await load
            await asyncio.sleep(2)
            point["background_events_received"] = sum(len(c.arrivals) for c in clients) - sent0
            point["background_events_expected"] = point["background_tweets"] * args.load_fanout
            point["spec"], point["rate"] = spec, round(rate, 1)
            point["deliveries_per_s"] = round(rate * args.load_fanout, 1)  # to open streams
            point["pipeline_deliveries_per_s"] = round(rate * (args.load_fanout + args.load_others), 1)
            result["loads"].append(point)
            log(f"load {spec}: {point}")
        result["loadavg_at_end"] = [round(x, 1) for x in os.getloadavg()]
        result["rss"].append({"streams": len(clients), "rss_mb": round((service.rss() or 0) / 2**20, 1),
                              "after": "latency runs"})
    finally:
        for c in clients:
            await c.close()
        if probe_clients is not None:
            await probe_clients.stop()
        await pub.stop()
        service.stop()
        worker.stop()
        await drop_namespace(settings)
    return result


def render(result: dict[str, Any]) -> str:
    lines = ["# Live streams (SSE): idle streams per query-service process and event latency", "",
             f"`{result.get('command') or 'python -m bench.live_bench --streams ' + str(result['streams'])}` "
             f"({time.strftime('%Y-%m-%d')}, this 2-core machine shared with the four servers and other "
             f"developers' runs: load average {result['loadavg_at_start'][0]} at the start, "
             f"{result.get('loadavg_at_end', ['?'])[0]} at the end).", "",
             "| streams open | query service RSS (MB) |", "| ---: | ---: |"]
    lines += [f"| {r['streams']} | {r['rss_mb']} |" for r in result["rss"]]
    lines += ["", f"Memory per open stream: **{result['kb_per_stream']} KB** (goal: 10,000 streams in one process "
              f"under 1 GB, i.e. < ~100 KB each); opening {result['streams']} streams took {result['open_seconds']} s "
              f"({result.get('open_retries_after_503', 0)} opens retried after a 503).",
              "", "| load | received | ack -> notice p50 / p99 (ms) | notice -> event p50 / p99 (ms) | "
              "ack -> event p50 / p99 (ms) |", "| --- | ---: | ---: | ---: | ---: |"]
    points = [("idle", result["idle"])] + [
        (f"{r['spec']}: {r['rate']} tweets/s, "
         + (f"{r['pipeline_deliveries_per_s']} deliveries/s, " if r.get("pipeline_deliveries_per_s", 0)
            > r["deliveries_per_s"] else "") + f"{r['deliveries_per_s']} deliveries/s to streams", r)
        for r in result["loads"]]
    for label, r in points:
        cells = [f"{r[k]['p50']} / {r[k]['p99']}" for k in ("ack_to_notice_ms", "notice_to_event_ms", "ack_to_event_ms")]
        lines.append(f"| {label} | {r['received']}/{r['rounds']} | " + " | ".join(cells) + " |")
    lines += ["", "Measured by the query service (`timeline_live_event_delay_seconds`, every stream event of the "
              "point, background load included; p50 / p99 as the upper bounds of their histogram buckets):", "",
              "| load | stream events | mean (ms) | p50 <= (ms) | p99 <= (ms) | within 50 ms |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, r in points:
        d = r.get("service_event_delay") or {"count": 0}
        if d["count"]:
            lines.append(f"| {label} | {d['count']} | {d['mean_ms']} | {d['p50_ms_at_most']} | {d['p99_ms_at_most']} | "
                         f"{d['share_within_ms'].get('50.0', float('nan')):.2%} |")
    lines += ["", "| load | seconds | stream events | query CPU (share of a core) | query CPU ms / stream event | "
              "worker CPU (share) | worker CPU ms / stream event | query / worker / probe client waiting for a CPU (ms per s) | "
              "background events received / expected |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, r in points:
        lines.append(f"| {label} | {r['wall_s']} | {r['stream_events']} | {r['query_cpu_share']} | {r['query_cpu_ms_per_event']} | "
                     f"{r['worker_cpu_share']} | {r['worker_cpu_ms_per_event']} | "
                     f"{r.get('query_run_wait_ms_per_s', '-')} / {r.get('worker_run_wait_ms_per_s', '-')} / "
                     f"{r.get('probe_client_run_wait_ms_per_s', '-')} | "
                     f"{r.get('background_events_received', '-')} / {r.get('background_events_expected', '-')} |")
    lines += ["", "The notice is published right after stage 2 wrote the timeline (Cassandra, then Redis), so "
              "notice -> event is the stream's part: the goal is within 50 ms of the timeline write. "
              "Times are the wall clock: the ack's in this process, the notice's as the stage wrote it in the "
              "notice, the event's when the probe client (a process and session of its own) read it. "
              "CPU per stream event: the process's CPU over the probe rounds divided by the tweet events its "
              "open streams received meanwhile (idle: the probes' alone, heartbeats included). Waiting for a CPU: "
              "the time the process's threads were runnable but not running (`/proc/<pid>/task/*/schedstat`), "
              "per second of the point."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--probe-interval", type=float, default=1.0,
                        help="seconds between probe rounds (at least): a load point lasts rounds x this")
    parser.add_argument("--load-rate", default="20", help="comma list: tweets/s, or N%% of --burst-deliveries")
    parser.add_argument("--burst-deliveries", type=float, default=4233.0,
                        help="the pipeline's burst capacity (bench/results/latest.md)")
    parser.add_argument("--load-fanout", type=int, default=10, help="stream users following each load author")
    parser.add_argument("--load-others", type=int, default=0,
                        help="users without a stream following each load author too")
    parser.add_argument("--open-concurrency", type=int, default=20)
    parser.add_argument("--workdir", default="/tmp/tl-bench")
    parser.add_argument("--out", default=str(RESULTS / "live.md"), help="writes <out>.md and <out>.json")
    parser.add_argument("--probe-client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_client:
        asyncio.run(probe_client(args.probe_client))
        return
    result = asyncio.run(run(args))
    # <out>.json and <out>.md, whichever suffix --out has (a .json --out was overwritten by the Markdown)
    Path(args.out).with_suffix(".json").write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    Path(args.out).with_suffix(".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
