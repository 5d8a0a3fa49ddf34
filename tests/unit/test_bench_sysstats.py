"""CPU of a process's threads by kind (bench/sysstats.py), as the lag phase reports Cassandra's."""
from __future__ import annotations

import os

from bench.sysstats import by_kind_delta, cassandra_thread_kind, threads_now


def test_cassandra_threads_are_told_apart_by_their_kernel_names() -> None:
    # the kernel keeps 15 characters of a thread's name
    assert cassandra_thread_kind("CompactionExecu") == "compaction"
    # one shared pool whose threads rename themselves for the stage they serve
    assert {cassandra_thread_kind(n) for n in ("Native-Transpor", "MutationStage-3", "ReadStage-17")} == {
        "request stages"}
    assert cassandra_thread_kind("PerDiskMemtable") == "memtable flush"
    assert cassandra_thread_kind("G1 Refine#0") == cassandra_thread_kind("GC Thread#1") == "JVM GC"
    assert cassandra_thread_kind("ScheduledTasks:") == "other"


def test_the_delta_follows_threads_by_id_whatever_their_names_became() -> None:
    kind = cassandra_thread_kind
    before = {1: ("ReadStage-1", 2.0), 2: ("Native-Transpor", 40.0), 3: ("CompactionExecu", 5.0), 9: ("gone", 4.0)}
    after = {1: ("ReadStage-1", 2.5), 2: ("MutationStage-2", 40.25),  # renamed: its 40 s are not new
             3: ("CompactionExecu", 5.0), 4: ("CompactionExecu", 0.5), 5: ("C2 CompilerThre", 3.0)}
    assert by_kind_delta(before, after, kind) == {"JIT compiler": 3.0, "request stages": 0.75, "compaction": 0.5}
    assert list(by_kind_delta(before, after, kind)) == ["JIT compiler", "request stages", "compaction"]


def test_threads_of_a_live_process_are_read_from_proc() -> None:
    got = threads_now(os.getpid())
    assert os.getpid() in got and all(cpu >= 0 for _, cpu in got.values())
    assert threads_now(2 ** 22 + 7) == {}  # no such process
