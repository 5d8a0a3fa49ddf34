"""The dashboard page's panels come from the same list as the Grafana JSON (dashboard.ROWS)."""
from __future__ import annotations

from ops.monitoring import dashboard
from ops.monitoring.page import ALERTS_ROW, WEB, page_config


def test_the_page_draws_the_grafana_dashboards_panels_plus_the_alerts():
    config = page_config()
    grafana = {p["title"]: p for p in dashboard.build()["panels"] if p["type"] != "row"}
    rows = config["rows"]
    assert [r["title"] for r in rows] == [title for title, _ in dashboard.ROWS] + [ALERTS_ROW]
    page_panels = [p for r in rows[:-1] for p in r["panels"]]
    assert [p["title"] for p in page_panels] == list(grafana)
    for panel in page_panels:
        targets = grafana[panel["title"]]["targets"]
        assert [(e["legend"], e["expr"]) for e in panel["exprs"]] == [(t["legendFormat"], t["expr"]) for t in targets]
        assert panel["kind"] == grafana[panel["title"]]["type"]
        assert panel["unit"] == grafana[panel["title"]]["fieldConfig"]["defaults"]["unit"]
    assert len({p["id"] for r in rows for p in r["panels"]}) == len(page_panels) + 1
    assert [p["kind"] for p in rows[-1]["panels"]] == ["alerts"]


def test_the_page_and_its_vendored_chart_library_are_in_the_repository():
    for name in ("index.html", "page.js", "page.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css",
                 "vendor/uPlot.LICENSE"):
        assert (WEB / name).is_file(), name
    html = (WEB / "index.html").read_text()
    assert "vendor/uPlot.iife.min.js" in html and "page.js" in html and "http" not in html.split("<footer")[0]
