"""PostgreSQL streaming replication (``localenv/postgres_replica.py``), real servers on
their own loopback addresses: a commit on the primary is readable on the replica (delay
measured), the replica refuses writes, and a replica that was down catches up."""
from __future__ import annotations

import statistics
import time

import psycopg
import psycopg.errors
import pytest

from localenv.host import STATE
from localenv.postgres_replica import PostgresPrimary, PostgresReplica
from localenv.services import start_all
from ops import schema
from settings import get_settings

pytestmark = [pytest.mark.regions, pytest.mark.short]

PORT = 21532
DSN = "postgresql://timeline:timeline@{}:%d/timeline" % PORT


@pytest.fixture(scope="module")
def pair():
    folder = STATE / "regions-pg-test"
    base = get_settings()
    primary = PostgresPrimary(base.replace(postgres_dsn=DSN.format("127.0.21.1")), state=folder / "a")
    replica = PostgresReplica(base.replace(postgres_dsn=DSN.format("127.0.22.1")), state=folder / "b",
                              primary=primary)
    for svc in (replica, primary):
        svc.stop()
    import shutil

    for svc in (primary, replica):
        for path in svc.data_dirs():
            shutil.rmtree(path, ignore_errors=True)
    assert all(o.up for o in start_all(base, [primary])), "primary did not start"
    schema.apply_postgres(primary.settings)
    assert all(o.up for o in start_all(base, [replica])), "replica did not start"
    yield primary, replica
    for svc in (replica, primary):
        svc.stop()
        for path in svc.data_dirs():
            shutil.rmtree(path, ignore_errors=True)


def test_commits_reach_the_replica_which_refuses_writes(pair) -> None:
    primary, replica = pair
    delays = []
    with psycopg.connect(primary.settings.postgres_dsn, autocommit=True) as a, \
            psycopg.connect(replica.settings.postgres_dsn, autocommit=True) as b:
        a.execute("CREATE TABLE IF NOT EXISTS replica_probe (n int PRIMARY KEY)")
        replica.wait_caught_up(timeout=30)
        for n in range(200):
            a.execute("INSERT INTO replica_probe VALUES (%s)", (n,))
            began = time.monotonic()
            while not b.execute("SELECT 1 FROM replica_probe WHERE n = %s", (n,)).fetchone():
                if time.monotonic() - began > 10:
                    raise AssertionError(f"row {n} not on the replica after 10 s")
                time.sleep(0.001)
            delays.append(time.monotonic() - began)
        ordered = sorted(delays)
        print(f"\ncommit on the primary -> readable on the replica: p50 {statistics.median(ordered) * 1000:.1f} ms, "
              f"p99 {ordered[int(0.99 * len(ordered))] * 1000:.1f} ms (200 commits)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            b.execute("INSERT INTO replica_probe VALUES (-1)")
    # The application's schema came with the copy.
    with psycopg.connect(replica.settings.postgres_dsn, **replica.settings.postgres_kwargs()) as b:
        assert b.execute("SELECT count(*) FROM users").fetchone() is not None
    assert [r["state"] for r in primary.replication()] == ["streaming"]


def test_a_replica_that_was_down_catches_up(pair) -> None:
    primary, replica = pair
    replica.stop()
    with psycopg.connect(primary.settings.postgres_dsn, autocommit=True) as a:
        a.execute("CREATE TABLE IF NOT EXISTS replica_gap (n int PRIMARY KEY)")
        for n in range(500):
            a.execute("INSERT INTO replica_gap VALUES (%s)", (n,))
    assert all(o.up for o in start_all(primary.settings, [replica]))
    took = replica.wait_caught_up(timeout=60)
    with psycopg.connect(replica.settings.postgres_dsn) as b:
        assert b.execute("SELECT count(*) FROM replica_gap").fetchone()[0] == 500
    print(f"\nreplica back: caught up {took:.2f} s after it answered")
