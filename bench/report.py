"""The benchmark's report: the Markdown of a run's results (``bench/run.py`` writes both).

    python -m bench.report bench/results/latest.json [-o latest.md]

re-renders the Markdown from a results JSON (to stdout, or into ``-o``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.cost_model import fit as cost_fit, point as cost_point
from bench.redis_stats import command_line
from bench.targets import get

REDIS_COMMANDS_NOTE = ("Redis's times are its own (`INFO commandstats`): a script call (evalsha) counts "
                       "everything it ran, and each command it ran counts on its own line too; the lag "
                       "points' zscore calls are the benchmark's probes, their zadd calls one per user "
                       "and chunk of stage 2 whose cached timeline exists.")


class Doc:
    """Markdown lines: paragraphs and tables, each followed by a blank line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def para(self, text: str) -> None:
        self.lines += [text, ""]

    def table(self, columns: list[str], rows: Iterable[list[Any]]) -> None:
        """A table; a row shorter than ``columns`` ends in empty cells."""
        for cells in (columns, ["---"] * len(columns), *rows):
            self.lines.append("| " + " | ".join(f"{c}" for c in cells) + " |" + " |" * (len(columns) - len(cells)))
        self.lines.append("")

    def section(self, r: dict, heading: str | None, name: str) -> dict | None:
        """The heading, then the report's section ``name``; None (and a note) if it did not run."""
        if heading is not None:
            self.para(heading)
        sec = r.get(name)
        if not isinstance(sec, dict):
            self.lines.append(f"_{name}: not run_")
            return None
        if "error" in sec or "skipped" in sec:
            self.para(f"_{name}: {'skipped' if 'skipped' in sec else 'failed: ' + sec['error']}_")
            return None
        return sec


def pcts(lat: dict, *keys: str) -> list[Any]:
    return [lat.get(k) for k in keys]


def render_md(r: dict) -> str:
    doc = Doc()
    header(doc, r)
    for heading, name, part in SECTIONS:
        if name is None:
            doc.para(heading)
            continue
        sec = doc.section(r, heading, name)
        if sec is not None:
            part(doc, sec, r)
    m = r.get("meta", {})
    doc.para("## Phases")
    doc.para(f"Seconds per phase: {m.get('phase_s')}. Cleanup: {r.get('cleanup')}.")
    return "\n".join(doc.lines) + "\n"


def header(doc: Doc, r: dict) -> None:
    m = r.get("meta", {})
    mach = m.get("machine", {})
    ds = get(r, "dataset", "graph") or {}
    followers = ds.get("followers_of_accounts_with_followers")
    doc.para(f"# Benchmark run {m.get('timestamp')} (`--scale {m.get('scale')} --seed {m.get('seed')}`)")
    doc.para(f"Machine: {mach.get('nproc')} cores ({mach.get('cpu_model')}), {mach.get('memory_gb')} GB RAM, "
             f"Linux {mach.get('kernel')}, Python {mach.get('python')}; load average at start "
             f"{mach.get('loadavg_at_start')}, at end {m.get('loadavg_at_end')}. Commit {m.get('git_commit')}. "
             f"Whole run {m.get('duration_s')} s."
             + (f" Cassandra: {m['cassandra']}." if m.get("cassandra") else "")
             + (f" Worker session (autogroup) nice: {m['worker_session_nice']} (TL_SESSION_NICE, cpu_priority.py)."
                if m.get("worker_session_nice") is not None else ""))
    workers = m.get("workers", 1)
    layout = m.get("worker_layout", "one")
    each = ("" if layout == "one" else
            f" (layout `{layout}`: a process per stage, policies/worker_layout.py)")
    doc.para(f"All four servers, {'one Faust worker' if workers == 1 else f'{workers} Faust workers (TL_BENCH_WORKERS)'}{each} and the load generators share these {mach.get('nproc')} cores; "
             "other people's test runs may too (each phase reports the machine's busy share and the CPU used outside "
             "the benchmark's processes). Numbers are a floor for dedicated servers.")
    doc.para(f"Dataset: {ds.get('users'):,} users ({ds.get('accounts_with_followers'):,} with followers, "
             f"{ds.get('read_only_accounts'):,} read-only), {ds.get('follow_edges'):,} follows, "
             f"{ds.get('celebrities')} celebrities (threshold {ds.get('celebrity_threshold'):,}), "
             f"{ds.get('inactive_share', 0):.0%} inactive; followers of accounts that have some: "
             f"median {get(followers, 'median')}, p99 {get(followers, 'p99')}, largest pushed authors "
             f"{get(followers, 'large_authors')}; {ds.get('expected_deliveries_per_tweet')} deliveries per tweet "
             f"expected (target {ds.get('target_deliveries_per_tweet')}). "
             f"Topic partitions: {get(r, 'dataset', 'partitions')}.")
    doc.para("## Targets")
    doc.table(["target", "value", "goal", "status", "detail"],
              ([t["target"], t["value"], t["goal"], f"**{t['status']}**", t["detail"]] for t in r.get("targets", [])))


def fanout_throughput(doc: Doc, f: dict, r: dict) -> None:
    doc.para(f"**{f['deliveries_per_s']:,} deliveries/s** end to end (Kafka -> fanout agent -> deliveries topic -> "
             f"delivery agent -> Cassandra `user_timeline` + Redis push): {f['deliveries_counted_in_cassandra']:,} "
             f"rows counted in Cassandra (expected from the graph: {f['deliveries_expected_from_graph']:,}; rows "
             f"written to a sample of inactive users: {f['rows_written_to_inactive_sample']}) for {f['tweets']:,} "
             f"tweets over {f['wall_s_first_publish_to_zero_lag']} s from the first publish to zero consumer lag "
             f"({f['feeding']}; fed for {f['feeding_s']} s) "
             f"({f['tweets_per_s']} tweets/s; calibration burst: {f['calibration']['deliveries_per_s']:,}/s). "
             f"{f['redis_pushes']}.")
    doc.para(f"Kafka messages consumed by the worker: {f['kafka_messages_consumed']:,} "
             f"({f['kafka_messages_consumed_per_s']:,}/s); table changelog messages produced: "
             f"{f['table_changelog_messages']:,} ({f['changelog_messages_per_1000_deliveries']} per 1,000 "
             f"deliveries). {f['end_resolution']}.")
    where_time_goes(doc, [("burst", f.get("where_time_goes"))])


def fanout_lag(doc: Doc, f: dict, r: dict) -> None:
    doc.para(f"Steady tweet rates as {f['rate_basis']}. {f['probe']}.")
    rows = []
    for run in f["runs"]:
        classes = [("all pushed authors", run["all_pushed_authors_from_kafka_ack_ms"], "")]
        classes += [(cls, v["from_kafka_ack_ms"], v["not_seen_within_60s"]) for cls, v in run["by_author_size"].items()]
        rows += [[run["load"], run["tweet_rate_per_s"], f"{run['offered_deliveries_per_s']:,}", cls,
                  *pcts(a, "count", "p50", "p99", "max"), lost, run["peak_consumer_lag_msgs"],
                  f"{run['machine_busy_share']:.0%}"] for cls, a, lost in classes]
    doc.table(["load", "tweets/s", "deliveries/s offered", "author size", "samples", "p50 ms", "p99 ms", "max ms",
               "not seen in 60 s", "peak consumer lag", "machine busy"], rows)
    steady = ((r.get("ceilings") or {}).get("cassandra") or {}).get("batched_one_row_per_partition_per_s")
    if steady:
        doc.para("Each point's offered deliveries against Cassandra alone taking one-row-per-partition batches "
                 f"from Python in this run ({steady:,.0f} rows/s with the whole machine, section 6): " + "; ".join(
                     f"{run['load']}: {run['offered_deliveries_per_s'] / steady:.0%}" for run in f["runs"]) + ".")
    for run in f["runs"]:
        ev = run.get("worker_log_warnings") or {}
        doc.lines.append(
            f"- {run['load']}: worst seconds (by send time, max lag ms) {run.get('worst_seconds_by_send_time')}; "
            f"worker log: {ev.get('producer_buffer_full', 0)} 'producer buffer full' warnings"
            + (f", and `{'`; `'.join(ev['lines'])}`" if ev.get("lines") else "")
            + background_line(run.get("cassandra_background"))
            + (f"; Cassandra threads by kind (CPU s): {run['cassandra_threads_cpu_s']}"
               if run.get("cassandra_threads_cpu_s") else "")
            + (f"; Redis commands by time: {command_line(run['redis_commands'])}" if run.get("redis_commands") else ""))
    doc.lines.append("")
    if any(run.get("redis_commands") for run in f["runs"]):
        doc.para(REDIS_COMMANDS_NOTE)
    where_time_goes(doc, [(run["load"], run.get("where_time_goes")) for run in f["runs"]])
    doc.para("CPU seconds per process during each run: " + "; ".join(
        f"{run['load']}: {run['cpu_s']} (outside: {run['outside_these_processes_cpu_s']})" for run in f["runs"]))
    cost_per_push(doc, f, r)


def cost_per_push(doc: Doc, f: dict, r: dict) -> None:
    """The burst and the loaded points: rows per (user, push) against the pipeline's CPU per
    delivery, and the fit of ``bench/cost_model.py``."""
    cpu = r.get("cpu_per_1000_deliveries") or {}
    points = [cost_point("burst", cpu.get("deliveries"), cpu.get("cpu_s") or {}, cpu.get("redis_commands"))]
    for run in f["runs"]:
        if run.get("share"):  # the idle point's CPU is the servers' own background
            points.append(cost_point(run["load"], run["offered_deliveries_per_s"] * run["duration_s"],
                                     run["cpu_s"], run.get("redis_commands")))
    points = [p for p in points if p]
    if not points:
        return
    doc.para("Rows per push (stage 2's deliveries per Redis ZADD call: one per user and chunk) against the "
             "pipeline's CPU per delivery (every process but the load generator; the loaded points count the "
             "deliveries they offered, all seen before their window closed):")
    doc.table(["window", "deliveries", "pushes", "rows per push", "pipeline CPU s", "CPU s per 1,000 deliveries"],
              [[p["window"], f"{p['deliveries']:,}", f"{p['pushes']:,}", p["rows_per_push"], p["pipeline_cpu_s"],
                p["cpu_s_per_1000_deliveries"]] for p in points])
    model = cost_fit([p for p in points if p["window"] != "burst"])
    if model:
        doc.para(f"Least squares over the loaded points (`bench/cost_model.py`; tweets one by one, as clients send "
                 f"them; the burst's come in bulk): **{model['ms_per_row']} ms of CPU per row and "
                 f"{model['ms_per_push']} ms per (user, push)**, largest relative error "
                 f"{model['largest_relative_error']:.0%}.")


def background_line(bg: dict[str, Any] | None) -> str:
    """The local Cassandra node's flushes and compactions during a load point (bench/cassandra_log.py)."""
    if bg is None:
        return ""
    flushes = ", ".join(f"{t} {n}" for t, n in sorted(bg["flushes"].items())) or "none"
    runs = ", ".join(f"{c['table']} {c['seconds']} s from second {c['start_s']} ({c['input']})"
                     for c in bg["compactions"]) or "none"
    return f"; Cassandra flushes: {flushes}; compactions: {runs}"


def where_time_goes(doc: Doc, points: list[tuple[str, dict | None]]) -> None:
    """Per load point: each stage's batches, their size and time; the store operations' times
    (the worker's own histograms, diffed around the load point: ``bench/stage_times.py``)."""
    points = [(load, w) for load, w in points if w]
    if not points:
        return
    doc.table(["load", "stage", "batches", "events/batch", "mean batch ms", "p99 batch ms (bucket)", "busy s"],
              [[load, stage, s.get("batches"), s.get("mean_events_per_batch"), s.get("mean_batch_ms"),
                s.get("p99_batch_ms_at_most"), s.get("busy_s")]
               for load, w in points for stage, s in w["stages"].items()])
    doc.table(["load", "store operation", "calls", "mean ms", "total s", "share of store time"],
              [[load, what, o["calls"], o["mean_ms"], o["total_s"], f"{o['share_of_store_time']:.0%}"]
               for load, w in points for what, o in list(w["store_ops"].items())[:6]])


def reads_http(doc: Doc, h: dict, r: dict) -> None:
    doc.para(f"{h['how']}. Command: `{h['command']}`. Population: {json.dumps(h.get('population'))}.")
    doc.table(["scenario", "concurrency", "server processes", "client", "req/s", "p50 ms", "p99 ms", "p999 ms",
               "max ms", "service CPU ms per read", "reads per service CPU-s", "Redis script us per read",
               "client CPU ms per request", "problems"],
              ([s["scenario"], s["concurrency"], s.get("server_processes", 1), s.get("client", "python"),
                s["requests_per_s"], *pcts(s["latency"], "p50", "p99", "p999", "max"),
                s.get("service_cpu_ms_per_read", ""), s.get("reads_per_service_cpu_s", ""),
                s.get("redis_script_us_per_read", ""), s.get("client_cpu_ms_per_request", ""),
                s.get("problems") or ""] for s in h["scenarios"].values()))


def reads_inprocess(doc: Doc, h: dict, r: dict) -> None:
    doc.para(f"{h['how']}. {h['read_rate_per_s']} reads/s with {h['tweet_rate_per_s']} tweets/s "
             f"(ratio {h['read_write_ratio']}:1) for {h['duration_s']} s; closed-loop capacity "
             f"{h['closed_loop_capacity_reads_per_s']} reads/s; machine busy {h['machine_busy_share']:.0%}.")
    doc.table(["scenario", "readers", "reads", "p50 ms", "p99 ms", "p999 ms", "max ms", "sources", "tweets/page"],
              ([k, s["readers"], *pcts(s["latency"], "count", "p50", "p99", "p999", "max"), s["sources"],
                s["mean_tweets_per_page"]] for k, s in h["scenarios"].items()))


def write_latency(doc: Doc, w: dict, r: dict) -> None:
    for p in w.get("points") or [w]:
        lat = p["latency"]
        doc.para(f"{p['how']}. {p['ok']}/{p['requests']} ok at concurrency {p['concurrency']}: "
                 f"**{p['requests_per_s']} requests/s, p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms** "
                 f"(p90 {lat.get('p90')}, max {lat.get('max')}).")


def write_savings(doc: Doc, s: dict, r: dict) -> None:
    doc.para(f"Over {s['tweets']:,} tweets ({s['celebrity_tweets']} by celebrities): {s['rows_written']:,} rows "
             f"written; a push to every follower of the non-celebrity authors would write "
             f"{s['push_without_activity_rule']:,} (**{s['saved_by_skipping_inactive']:.1%} saved** by skipping "
             f"inactive users, at {s['inactive_share_of_users']:.0%} inactive users); a naive push to every follower "
             f"of every author {s['naive_push_to_every_follower']:,} "
             f"({s['saved_vs_naive (inactive + celebrity rules)']:.1%} saved). "
             f"Design claim: {s['design_claim']}. Note: {s.get('note', '')}.")


def share(x: Any, y: Any) -> str:
    if not x or not y:
        return "n/a"
    return f"{x / y:.1%}" if x / y >= 0.01 else f"{x / y:.3%}"


def ceilings(doc: Doc, c: dict, r: dict) -> None:
    rate = get(r, "fanout_throughput", "deliveries_per_s")
    consumed = get(r, "fanout_throughput", "kafka_messages_consumed_per_s")
    redis, cass, kafka = c["redis"], c["cassandra"], c["kafka"]

    def vs_pipeline(what: str, ceiling: Any, figure: Any = rate, unit: str = "deliveries/s") -> list[Any]:
        return [what, f"{ceiling:,}", f"{figure} {unit}", share(figure, ceiling)]

    rows = [
        vs_pipeline(f"Redis pipelined ZADD ({redis['zadd_ops']:,} ops)", redis["zadd_per_s"]),
        ["Redis pipelined ZREVRANGE 0 49 on 800-entry sets", f"{redis['zrevrange_0_49_per_s']:,}"],
        vs_pipeline("Redis Lua push (RedisTimelines.push_many, entries)", redis["lua_push_entries_per_s"]),
        vs_pipeline(f"Cassandra prepared inserts, CassandraStore.execute_many ({cass['rows']:,} rows, concurrency "
                    f"{cass['best_concurrency']}; by concurrency {cass['inserts_per_s_by_concurrency']})",
                    cass["inserts_per_s"]),
    ]
    if cass.get("batched_inserts_per_s"):
        b = cass["batched"]
        rows.append(vs_pipeline(
            f"Cassandra prepared inserts in UNLOGGED batches, as the pipeline writes them (up to "
            f"{b['statements_per_batch']} statements, {b['partitions_per_batch']} partitions and "
            f"{b['bytes_per_batch']:,} B per batch, {b['batches_in_flight']} in flight)",
            cass["batched_inserts_per_s"]))
    if cass.get("batched_one_row_per_partition_per_s"):
        rows.append(vs_pipeline("The same batches with one row per partition (the shape of a steady load: about one "
                                "row per user per batch)", cass["batched_one_row_per_partition_per_s"]))
    rows += [
        vs_pipeline(f"aiokafka consume ({kafka['messages']:,} msgs of {kafka['message_bytes']} B, "
                    f"{kafka['consume_mb_per_s']} MB/s)", kafka["consume_msgs_per_s"], consumed, "msgs/s"),
        ["aiokafka produce, acks=all", f"{kafka['produce_acks_all_msgs_per_s']:,}"],
    ]
    doc.table(["ceiling", "per second", "pipeline figure", "pipeline / ceiling"], rows)


def pg_pull_baseline(doc: Doc, p: dict, r: dict) -> None:
    doc.para(f"{p['tweets_rows']:,} rows in `tweets` ({p['tweets_from_pipeline_projection']:,} from the pipeline's "
             f"projection, {p['tweets_copied']:,} COPYed in {p['copy_s']} s, authors drawn with the workload's mix), "
             f"{p['follows_rows']:,} rows in `follows` (the same graph, projected by the pipeline); sizes "
             f"{p['table_sizes']}. Indexes: {p['indexes']}. Readers: {p['readers']}. {p['how']}.")
    doc.table(["query / readers", "queries", "q/s", "p50 ms", "p99 ms", "max ms", "rows"],
              ([k, q["latency"].get("count"), q["queries_per_s"], *pcts(q["latency"], "p50", "p99", "max"),
                q["mean_rows"]] for k, q in p["queries"].items()))
    ours = p.get("ours_in_process_same_conditions") or {}
    if ours:
        doc.para("Our reads under the same conditions (HomeTimelineReader in this process, one at a time, worker "
                 "stopped, same readers):")
        doc.table(["scenario", "reads", "p50 ms", "p99 ms", "max ms", "sources"],
                  ([k, *pcts(v["latency"], "count", "p50", "p99", "max"), v["sources"]] for k, v in ours.items()))
    for k, plan in p["plans"].items():
        doc.lines.append(f"<details><summary>plan: {k}</summary>\n\n```\n{plan}\n```\n</details>\n")


def cpu_per_1000_deliveries(doc: Doc, c: dict, r: dict) -> None:
    nproc = get(r, "meta", "machine", "nproc")
    doc.para(f"Window: {c['window']}, {c['wall_s']} s, {c['deliveries']:,} deliveries; the machine was "
             f"{c['machine_busy_share']:.0%} busy ({c['machine_busy_cpu_s']} of {c['machine_capacity_cpu_s']} "
             f"CPU-s); {c['outside_these_processes_cpu_s']} CPU-s went to processes outside this list (other work on "
             f"the machine).")
    doc.para(f"All pipeline processes together: **{c.get('pipeline_cpu_s_per_1000_deliveries')} CPU-s per 1,000 "
             f"deliveries**, so these {nproc} cores could carry at most ~{c.get('machine_bound_deliveries_per_s')} "
             f"deliveries/s with nothing else running; 20,000/s would take ~{c.get('cores_needed_for_20000_per_s')} "
             "cores at this efficiency.")
    doc.table(["process", "CPU s", "CPU s per 1,000 deliveries"],
              ([k, v, c["cpu_s_per_1000_deliveries"].get(k)] for k, v in c["cpu_s"].items()))
    if c.get("worker_threads_cpu_s"):
        which = " (stage 2's process)" if r.get("meta", {}).get("worker_layout") == "split" else ""
        doc.para(f"Worker threads{which} (CPU s): {c['worker_threads_cpu_s']}.")
    if c.get("cassandra_threads_cpu_s"):
        doc.para(f"Cassandra threads by kind (CPU s): {c['cassandra_threads_cpu_s']}.")
    if c.get("redis_commands"):
        doc.para(f"Redis commands by time: {command_line(c['redis_commands'])}. {REDIS_COMMANDS_NOTE}")


def profile(doc: Doc, p: dict, r: dict) -> None:
    doc.para(f"{p['how']}: {p['deliveries']:,} deliveries in {p['wall_s']} s "
             f"({p['deliveries_per_s_while_profiled']:,}/s while profiled, {p['profiler_slowdown']}x slower than "
             f"unprofiled); main thread CPU {p['main_thread_cpu_s']} s of {p['wall_s']} s wall. Full tree: "
             f"`{p['text_report']}` (git-ignored).")
    others = {k: v for k, v in (p.get("process_cpu_s") or {}).items() if k != "worker"}
    which = " (stage 2's process: the layout is split)" if r.get("meta", {}).get("worker_layout") == "split" else ""
    doc.para(f"Worker process{which} CPU in this window: {p.get('worker_threads_cpu_s')} (from /proc; the main "
             f"thread is the only one pyinstrument sees). Other processes (CPU s): {others}.")
    ts = p.get("all_threads_cpu_sampler")
    if ts:
        doc.para(f"All threads, CPU-weighted sampler ({ts['interval_s'] * 1000:.0f} ms; CPU each thread used since "
                 f"the last sample charged to its current Python frame): {ts['cpu_s_by_thread']} CPU s over "
                 f"{ts['wall_s']} s.")
        doc.table(["thread", "CPU s", "top libraries (self)", "top functions (self)"],
                  ([kind, v["cpu_s"], ", ".join(f"{x['what']} {x['cpu_s']}" for x in v["by_library"][:5]),
                    ", ".join(f"`{x['what']}` {x['cpu_s']}" for x in v["top_functions"][:5])]
                   for kind, v in ts["by_thread"].items()))
    doc.para("Main thread (pyinstrument, wall clock):")
    for title, key in (("By task (inclusive)", "by_task_inclusive"),
                       ("By library (self time)", "by_library_self_time"),
                       ("Application functions (inclusive)", "top_application_functions_inclusive")):
        doc.para(f"{title}:")
        doc.table(["what", "s", "share of wall"],
                  ([row["what"], row["s"], f"{row['share']:.1%}"] for row in p[key][:12]))


def graph_load(doc: Doc, gl: dict, r: dict) -> None:
    doc.para(f"{gl['follow_events']:,} follows through the pipeline in {gl['follows_s']} s = "
             f"**{gl['follows_per_s']} follows/s**; worker start + {gl['activity_events']:,} activity events "
             f"{gl['worker_start_and_activity_s']} s; {gl['active_users_cached']:,} of {gl['active_users']:,} active "
             f"users' timelines cached before the measurements.")


# (heading, the report's section, its renderer), in the report's order; no section: a heading alone.
SECTIONS: list[tuple[str, str | None, Callable[[Doc, dict, dict], None] | None]] = [
    ("## 1. Fanout throughput", "fanout_throughput", fanout_throughput),
    ("## 2. Fanout lag (tweet accepted by Kafka -> visible in a follower's cached Redis timeline)", "fanout_lag",
     fanout_lag),
    ("## 3. Read latency", None, None),
    ("### Through HTTP (`bench/read_bench.py`)", "reads_http", reads_http),
    ("### In-process on the benchmark's data, 50 reads per tweet (`query/reader.py`)", "reads_inprocess",
     reads_inprocess),
    ("## 4. Write latency: POST /v1/tweets", "write_latency", write_latency),
    ("## 5. Write savings (activity rule)", "write_savings", write_savings),
    ("## 6. Raw ceilings (same run, from Python) and the pipeline's share", "ceilings", ceilings),
    ("## 7. Baseline: the pull model in PostgreSQL alone", "pg_pull_baseline", pg_pull_baseline),
    ("## 8. CPU per 1,000 deliveries, per process", "cpu_per_1000_deliveries", cpu_per_1000_deliveries),
    ("## Where the time goes (worker profile)", "profile", profile),
    ("## Graph load", "graph_load", graph_load),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results JSON (run-<timestamp>.json, latest.json)")
    parser.add_argument("-o", "--out", type=Path, help="write the Markdown here instead of stdout")
    args = parser.parse_args(argv)
    text = render_md(json.loads(args.results.read_text()))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
