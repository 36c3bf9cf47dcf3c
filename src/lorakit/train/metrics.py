"""Metrics: a JSONL file (always), and the trackers output.report_to names (TensorBoard, MLflow, W&B: trackers.py).

One record per line: {"step": 12, "kind": "train", "loss": 0.71, "lr": 0.0002, ...}; kind is "train" or "eval".
A resumed run first drops the records past its checkpoint, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorakit.train.trackers import RunInfo, Tracker, check_trackers, start_trackers

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics file; a last line cut short by a kill is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_after(path: Path, step: int) -> None:
    """Keep only records up to `step` (those a resumed run will not write again)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)


def check_sinks(output: Any) -> None:
    """Refuse, before a run writes anything, a tracker that is asked for and not installed (output: OutputConfig)."""
    check_trackers(output)


class MetricsLogger:
    """Writes on the main process only; the others get a logger that does nothing.

    trackers: names from lorakit.train.trackers.TRACKERS (see chosen_trackers); each gets every record too."""

    def __init__(self, out_dir: Path, enabled: bool, trackers: Sequence[str] = (), run_name: str = "",
                 run_config: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / METRICS_FILE
        self._file = None
        self.trackers: list[Tracker] = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        run = RunInfo(Path(out_dir), run_name or Path(out_dir).resolve().name, run_config or {})
        self.trackers = start_trackers(list(trackers), run)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numbers = {k: float(v) for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        for tracker in self.trackers:
            tracker.log(step, kind, numbers)

    def close(self, failed: bool = False) -> None:
        """Flush and close the file and every tracker (a failed run is marked so where a tracker can)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(failed)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 8) if math.isfinite(value) else str(value)
    return value
