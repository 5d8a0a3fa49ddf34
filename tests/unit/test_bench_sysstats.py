"""CPU of a process's threads by kind (bench/sysstats.py), as the lag phase reports Cassandra's."""
from __future__ import annotations

import os

from bench.sysstats import by_kind_delta, cassandra_thread_kind, threads_by_kind


def test_cassandra_threads_are_told_apart_by_their_kernel_names() -> None:
    # the kernel keeps 15 characters of a thread's name
    assert cassandra_thread_kind("CompactionExecu") == "compaction"
    assert cassandra_thread_kind("Native-Transpor") == "requests"
    assert cassandra_thread_kind("MutationStage-3") == "mutations"
    assert cassandra_thread_kind("ReadStage-17") == "reads"
    assert cassandra_thread_kind("PerDiskMemtable") == "memtable flush"
    assert cassandra_thread_kind("G1 Refine#0") == cassandra_thread_kind("GC Thread#1") == "JVM GC"
    assert cassandra_thread_kind("ScheduledTasks:") == "other"


def test_the_delta_sums_threads_of_a_kind_and_counts_new_threads_from_zero() -> None:
    before = {(1, "reads"): 2.0, (2, "reads"): 1.0, (3, "compaction"): 5.0, (9, "gone"): 4.0}
    after = {(1, "reads"): 2.5, (2, "reads"): 1.25, (3, "compaction"): 5.0, (4, "compaction"): 0.5,
             (5, "requests"): 3.0}
    assert by_kind_delta(before, after) == {"requests": 3.0, "reads": 0.75, "compaction": 0.5}
    assert list(by_kind_delta(before, after)) == ["requests", "reads", "compaction"]  # largest first


def test_threads_of_a_live_process_are_read_from_proc() -> None:
    got = threads_by_kind(os.getpid(), lambda name: "mine")
    assert (os.getpid(), "mine") in got and all(cpu >= 0 for cpu in got.values())
    assert threads_by_kind(2 ** 22 + 7, cassandra_thread_kind) == {}  # no such process
