"""wrk (Debian's package, a load generator written in C) for the HTTP read benchmark.

``bench/read_bench.py``'s own load generator is Python (asyncio streams): its time between
writing a request and having read the response is part of every latency it measures, and at
concurrency 8 it takes CPU from the same 2 cores as the service. wrk costs a fraction of that
per request, so its figures are closer to what the service and the stores cost. Each wrk run
follows the Python run of the same scenario (same targets, same service, same minute), which
has checked every response's page; wrk counts statuses other than 2xx/3xx and socket errors.

``wrk -t1 -c<concurrency> -d<seconds>s --latency -s <script>``: one thread, a closed loop per
connection (the next request when the previous response is in, as the Python generator), the
requests pre-formatted in the script (paths and bearer tokens in turn), the percentiles printed
by its ``done`` hook from wrk's own histogram (microseconds).
"""
from __future__ import annotations

import asyncio
import json
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

SCRIPT = """
local targets = %(targets)s
local reqs = {}
local i = 0

init = function(args)
  for k, t in ipairs(targets) do
    reqs[k] = wrk.format("GET", t[1], {["Authorization"] = t[2]})
  end
end

request = function()
  i = i %% #reqs + 1
  return reqs[i]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %%d, "duration_us": %%d, "non_2xx_3xx": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "timeout": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "p999_us": %%d, ' ..
    '"max_us": %%d, "mean_us": %%.1f}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def lua_string(value: str) -> str:
    if not value.isascii() or not value.isprintable():
        raise ValueError(f"not a plain ASCII string: {value!r}")
    return json.dumps(value)  # printable ASCII: a JSON string literal is a Lua one


def script(targets: Sequence[tuple[str, str]]) -> str:
    """The wrk script for (path, Authorization header value) targets, requested in turn."""
    rows = ",\n  ".join(f"{{{lua_string(path)}, {lua_string(auth)}}}" for path, auth in targets)
    return SCRIPT % {"targets": "{\n  " + rows + "\n}"}


def parse(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith("WRK_RESULT "):
            return json.loads(line[len("WRK_RESULT "):])
    raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")


async def run(base_url: str, targets: Sequence[tuple[str, str]], concurrency: int, seconds: float) -> dict[str, Any]:
    """One wrk run; latencies in ms, requests/s, errors, and wrk's CPU per request."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script(targets))
        path = Path(f.name)
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = await asyncio.create_subprocess_exec(
            "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency",
            "-s", str(path), base_url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        raw, _ = await proc.communicate()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        path.unlink(missing_ok=True)
    text = raw.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}:\n{text[-2000:]}")
    r = parse(text)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    elapsed = r["duration_us"] / 1e6
    errors = {k: r[k] for k in ("non_2xx_3xx", "connect", "read", "write", "timeout") if r[k]}
    ok = r["requests"] - r["non_2xx_3xx"]
    return {
        "requests": r["requests"],
        "ok": ok,
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(ok / elapsed, 1) if elapsed else None,
        "latency_ms": {"p50": r["p50_us"] / 1000, "p90": r["p90_us"] / 1000, "p99": r["p99_us"] / 1000,
                       "p999": r["p999_us"] / 1000, "max": r["max_us"] / 1000, "mean": round(r["mean_us"] / 1000, 3)},
        "client_cpu_ms_per_request": round(cpu_s * 1000 / r["requests"], 4) if r["requests"] else None,
    }
