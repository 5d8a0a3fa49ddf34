"""The alert rules under promtool (Debian's ``prometheus`` package, installed by ``./dev``):
``ops/monitoring/alerts_test.yml`` shows each of the design's alerts firing and staying
silent, and the configuration ``./dev up`` generates is one Prometheus accepts."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ops.monitoring import scrape

MONITORING = Path(scrape.__file__).resolve().parent


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: install Debian's prometheus package (./dev does)"
    return found


def run(argv: list[str], cwd: Path) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_each_design_alert_fires_and_stays_silent(promtool: str) -> None:
    out = run([promtool, "test", "rules", "alerts_test.yml"], MONITORING)
    assert "SUCCESS" in out
    tested = set()
    for line in (MONITORING / "alerts_test.yml").read_text().splitlines():
        if "alertname:" in line:
            tested.add(line.split("alertname:")[1].split(",")[0].split("}")[0].strip())
    design = {"FanoutLagCritical", "FanoutLagHigh", "ConsumerLagCritical", "CacheHitRateCritical",
              "CacheHitRateLow", "ReadLatencyHigh", "CpuHigh"}
    assert design <= tested, f"no test series for {design - tested}"


def test_generated_config_is_valid(promtool: str, tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(scrape.prometheus_config({job: [f"127.0.0.1:{9000 + i}"] for i, job in enumerate(scrape.JOBS)}))
    out = run([promtool, "check", "config", str(config)], tmp_path)
    assert "SUCCESS" in out and "rules found" in out, out


def test_config_lists_only_started_processes() -> None:
    text = scrape.prometheus_config({scrape.QUERY: ["127.0.0.1:8082"], scrape.REDIS: []})
    assert '"job_name": "timeline-query"' in text and '"redis"' not in text
    with pytest.raises(ValueError):
        scrape.prometheus_config({"grafana": ["127.0.0.1:3000"]})
