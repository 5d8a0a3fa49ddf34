"""The design's dashboard (section 12) as a page, served by the project: no Grafana needed.

    python -m ops.monitoring.page --prometheus http://127.0.0.1:9090 --port 9095

serves ``/`` (``web/index.html``, ``web/page.js``: time-series charts drawn with uPlot,
vendored under ``web/vendor/``), ``/config.json`` (the panels: :func:`page_config`, built
from ``dashboard.ROWS``, the list the Grafana JSON is generated from, plus the alerts
section) and proxies ``GET /api/v1/*`` to Prometheus, so the page reads Prometheus's HTTP
API from its own origin (no CORS). The page refreshes itself every ``refresh_s`` seconds.
"""
from __future__ import annotations

import argparse
import logging
import mimetypes
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import orjson

from ops.monitoring.dashboard import ROWS

WEB = Path(__file__).resolve().parent / "web"
DEFAULT_PORT = 9095
ALERTS_ROW = "Alerts firing"
log = logging.getLogger(__name__)


def page_config(*, refresh_s: float = 5.0, range_s: int = 900, step_s: int = 5) -> dict[str, Any]:
    """What the page draws: ``dashboard.ROWS`` (title, unit, kind, description and the
    (legend, PromQL) pairs of every panel), then the alerts section (``alerts.yml``'s rules
    and their state, from ``/api/v1/rules``)."""
    rows = []
    for n_row, (title, panels) in enumerate(ROWS):
        rows.append({"title": title, "panels": [
            {"id": f"p{n_row}-{n}", "title": p.title, "unit": p.unit, "kind": p.kind, "description": p.description,
             "exprs": [{"legend": legend, "expr": expr} for legend, expr in p.exprs]}
            for n, p in enumerate(panels)
        ]})
    rows.append({"title": ALERTS_ROW, "panels": [
        {"id": "alerts", "title": "Alert rules (ops/monitoring/alerts.yml)", "kind": "alerts", "unit": "",
         "description": "Firing first, then pending, then inactive.", "exprs": []},
    ]})
    return {"title": "Home timeline service", "refresh_s": refresh_s, "range_s": range_s, "step_s": step_s,
            "rows": rows}


class PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], prometheus: str, config: dict[str, Any]) -> None:
        super().__init__(address, Handler)
        self.prometheus = prometheus.rstrip("/")
        self.config_json = orjson.dumps(config)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "PageServer":
        """Serve in a background thread (tests); :meth:`shutdown` stops it."""
        Thread(target=self.serve_forever, name="dashboard-page", daemon=True).start()
        return self


class Handler(BaseHTTPRequestHandler):
    server: PageServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/api/v1/"):
            self._proxy()
        elif path == "/config.json":
            self._send(200, self.server.config_json, "application/json")
        else:
            self._static("index.html" if path == "/" else path.lstrip("/"))

    def _static(self, name: str) -> None:
        file = (WEB / name).resolve()
        if WEB not in file.parents or not file.is_file():
            self._send(404, b"not found\n", "text/plain")
            return
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._send(200, file.read_bytes(), content_type)

    def _proxy(self) -> None:
        try:
            with urllib.request.urlopen(self.server.prometheus + self.path, timeout=10) as resp:
                self._send(resp.status, resp.read(), resp.headers.get("Content-Type", "application/json"))
        except urllib.error.HTTPError as exc:  # 400/422: Prometheus's error document
            self._send(exc.code, exc.read(), exc.headers.get("Content-Type", "application/json"))
        except (urllib.error.URLError, OSError) as exc:
            body = orjson.dumps({"status": "error", "errorType": "unavailable",
                                 "error": f"Prometheus at {self.server.prometheus} did not answer: {exc}"})
            self._send(502, body, "application/json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.monitoring.page", description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--refresh", type=float, default=5.0, help="seconds between refreshes")
    args = parser.parse_args(argv)
    server = PageServer((args.host, args.port), args.prometheus, page_config(refresh_s=args.refresh))
    print(f"dashboard on {server.url}/ (Prometheus {server.prometheus})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
