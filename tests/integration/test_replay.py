"""Replay: wipe every projection and the Faust state, rebuild from the log, get the same timelines."""
from __future__ import annotations

import pytest

from localenv.worker import Worker
from localenv.workload import generate, produce
from ops.lag import wait_caught_up
from ops.rebuild import RebuildError, rebuild
from ops.verify import verify
from tests.integration.pipeline_harness import drop, isolated_settings, provision, reader_for


async def snapshot(settings, users) -> dict[int, list[int]]:
    async with reader_for(settings) as reader:
        return {u: await reader.all_ids(u, page_size=100) for u in users}


@pytest.mark.slow
async def test_rebuild_from_log_gives_identical_timelines(tmp_path):
    settings = isolated_settings(tmp_path, celebrity_threshold=15, celebrity_hysteresis=4,
                                 timeline_cap=50, backfill_limit=20)
    provision(settings)
    workload = generate(5, users=100, tweets=800, celebrity_threshold=15)
    worker = Worker(settings, tmp_path / "live.log").start()
    try:
        await produce(settings, workload.events, workload.poison)
        await wait_caught_up(settings, timeout=400, check=worker.check)
        before = await snapshot(settings, workload.users)
        assert sum(map(len, before.values())) > 500
        with pytest.raises(RebuildError, match="stop the workers"):
            await rebuild(settings, workdir=tmp_path)  # refuses while a worker runs
    finally:
        worker.stop()
    try:
        report = await rebuild(settings, workdir=tmp_path, timeout=600)
        assert report is not None and report.diffs == {}, report.diffs
        after = await snapshot(settings, workload.users)
        assert after == before
        # Flushing the caches alone keeps the same answer too.
        assert (await rebuild(settings, projections="redis")).diffs == {}
        assert (await verify(settings, sample=10)).ok
    finally:
        drop(settings)
