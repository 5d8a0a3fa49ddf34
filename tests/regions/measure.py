"""What the regions tests measure: percentiles in ms, and values printed and kept in a JSON file."""
from __future__ import annotations

import json
from pathlib import Path


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (seconds), in milliseconds."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 2)


class Measured:
    """``record(**values)``: logged and merged into ``path`` (JSON)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, object] = {}

    def record(self, **values: object) -> None:
        from localenv.host import log

        self.values.update(values)
        log(f"measured: {values}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.values, indent=2, sort_keys=True, default=str))
