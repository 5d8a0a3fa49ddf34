"""The lag phase's reading of the local Cassandra node's log (bench/cassandra_log.py): flushes
and compactions that overlap a load point, from lines as Cassandra 5.0 writes them."""
from __future__ import annotations

from datetime import datetime

from bench.cassandra_log import background_work, node_background_work

DATA = "/work/main/.state/cassandra/data"
LINES = [
    f"INFO  [PerDiskMemtableFlushWriter_0:5] 2026-12-03 07:46:21,651 Flushing.java:179 - Completed flushing "
    f"{DATA}/bench_x/user_timeline-bc0b5d70eeec11f1ad0eeb140c351fc2/nb-8-big-Data.db (5.012MiB) for commitlog "
    "position CommitLogPosition(segmentId=1796283584083, position=21697343)",
    f"INFO  [CompactionExecutor:2] 2026-12-03 07:46:25,611 CompactionTask.java:274 - Compacted "
    f"(a1f05ca0-eeed-11f1-ad0e-eb140c351fc2) 4 sstables to [{DATA}/bench_x/user_timeline-"
    "bc0b5d70eeec11f1ad0eeb140c351fc2/nb-9-big,] to level=0.  23.587MiB to 24.111MiB (~102% of original) in "
    "3,933ms.  Read Throughput = 5.997MiB/s, Write Throughput = 6.130MiB/s, Row Throughput = ~506,402/s.",
    f"INFO  [CompactionExecutor:2] 2026-12-03 07:47:34,278 CompactionTask.java:274 - Compacted "
    f"(c7ddae90-eeed-11f1-ad0e-eb140c351fc2) 2 sstables to [{DATA}/system/paxos-b7b7f0c2fd0a34108c053ef614bb7c2d/"
    "nb-105-big,] to level=0.  66.083MiB to 60.1MiB (~91% of original) in 8,962ms.  Read Throughput = 7MiB/s",
    f"INFO  [PerDiskMemtableFlushWriter_0:6] 2026-12-03 07:47:25,193 Flushing.java:179 - Completed flushing "
    f"{DATA}/system/paxos-b7b7f0c2fd0a34108c053ef614bb7c2d/nb-104-big-Data.db (13MiB) for commitlog position x",
    "INFO  [ScheduledTasks:1] 2026-12-03 07:44:52,189 UncommittedTableData.java:566 - Scheduling uncommitted paxos",
    "a continuation line without a stamp",
]


def at(clock: str) -> float:
    return datetime.strptime(f"2026-12-03 {clock}", "%Y-%m-%d %H:%M:%S").timestamp()


def test_flushes_and_compactions_within_the_window_per_table() -> None:
    got = background_work(LINES, at("07:46:20"), at("07:47:40"))
    assert got["flushes"] == {"user_timeline": 1, "system.paxos": 1}
    assert got["compactions"] == [
        {"table": "user_timeline", "start_s": 1.7, "seconds": 3.93, "input": "23.587MiB"},
        {"table": "system.paxos", "start_s": 65.3, "seconds": 8.96, "input": "66.083MiB"},
    ]
    assert got["compaction_s"] == 12.89


def test_a_compaction_counts_when_it_overlaps_the_window() -> None:
    # the paxos compaction ran 07:47:25.3-07:47:34.3: it overlaps a window ending at 07:47:30,
    # and one starting at 07:47:30, but not a window that ended before it began
    assert [c["table"] for c in background_work(LINES, at("07:47:00"), at("07:47:30"))["compactions"]] == ["system.paxos"]
    assert [c["table"] for c in background_work(LINES, at("07:47:30"), at("07:48:00"))["compactions"]] == ["system.paxos"]
    assert background_work(LINES, at("07:46:30"), at("07:47:20")) == {"flushes": {}, "compactions": [], "compaction_s": 0}


def test_no_log_to_read_gives_none(tmp_path) -> None:
    assert node_background_work(None, 0, 1) is None
    assert node_background_work(tmp_path / "absent.log", 0, 1) is None
    log = tmp_path / "system.log"
    log.write_text("\n".join(LINES))
    assert node_background_work(log, at("07:46:20"), at("07:47:40"))["compaction_s"] == 12.89
