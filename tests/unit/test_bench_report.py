"""The benchmark's report and targets are pure functions of a run's results JSON: the
committed ``bench/results/latest.json`` renders to the committed ``latest.md`` byte for byte,
and its ``targets`` section is what ``evaluate_targets`` computes from it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.latency import latency_summary
from bench.report import main, render_md
from bench.targets import evaluate_targets

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


@pytest.fixture(scope="module")
def latest() -> dict:
    return json.loads((RESULTS / "latest.json").read_text())


def test_latest_json_renders_to_latest_md(latest: dict) -> None:
    assert render_md(latest) == (RESULTS / "latest.md").read_text()


def test_the_command_rerenders_a_results_file(tmp_path: Path) -> None:
    out = tmp_path / "again.md"
    assert main([str(RESULTS / "latest.json"), "-o", str(out)]) == 0
    assert out.read_text() == (RESULTS / "latest.md").read_text()


def test_targets_are_recomputed_from_the_figures(latest: dict) -> None:
    assert evaluate_targets(latest) == latest["targets"]


def test_a_failed_skipped_or_missing_section_is_named_not_rendered(latest: dict) -> None:
    r = {**latest, "fanout_lag": {"error": "RuntimeError('boom')"}, "profile": {"skipped": True}}
    del r["write_latency"]
    md = render_md(r)
    assert "_fanout_lag: failed: RuntimeError('boom')_" in md and "| load | tweets/s |" not in md
    assert "_profile: skipped_" in md and "_write_latency: not run_" in md
    assert "## 8. CPU per 1,000 deliveries, per process" in md  # the other sections stay


def test_a_missing_figure_makes_its_target_na(latest: dict) -> None:
    r = {**latest, "fanout_throughput": {"error": "x"}}
    rows = {t["target"]: t for t in evaluate_targets(r)}
    assert rows["fanout deliveries/s"]["status"] == "n/a"
    assert rows["fanout vs slower raw store ceiling"]["detail"] == "missing figure"


def test_latency_summary_in_ms() -> None:
    assert latency_summary([]) == {"count": 0}
    s = latency_summary([0.003, 0.001, 0.002])
    assert s == {"count": 3, "p50": 2.0, "p90": 2.8, "p99": 2.98, "p999": 3.0, "max": 3.0, "mean": 2.0}
    assert list(s) == ["count", "p50", "p90", "p99", "p999", "max", "mean"]
