"""Metrics sinks: a JSONL file (always), TensorBoard (when installed) and MLflow (when asked for).

One record per line: {"step": 12, "kind": "train", "loss": 0.71, "lr": 0.0002, ...}; kind is "train" or "eval".
A resumed run first drops the records past its checkpoint, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError

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


def check_sinks(tensorboard: str, mlflow: bool) -> None:
    """Refuse, before a run writes anything, a sink that is asked for and not installed."""
    if tensorboard == "true":
        try:
            import torch.utils.tensorboard  # noqa: F401 - needs the tensorboard package
        except ImportError as exc:
            raise ConfigError(f"output.tensorboard=true but TensorBoard is not available ({exc}); pip install "
                              "tensorboard, or set output.tensorboard=auto") from None
    if mlflow and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("output.mlflow=true needs MLflow: pip install mlflow (or set output.mlflow=false)")


class MetricsLogger:
    """Writes on the main process only; the others get a logger that does nothing."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: str = "auto", mlflow: bool = False,
                 run_config: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / METRICS_FILE
        self._file = None
        self._tb = None
        self._mlflow = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard == "true" or (tensorboard == "auto" and importlib.util.find_spec("tensorboard")):
            self._tb = _tensorboard_writer(Path(out_dir) / "tensorboard")
        if mlflow:
            self._mlflow = _start_mlflow(run_config or {})
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        if self._mlflow is not None:
            self._mlflow.log_metrics({f"{kind}_{k}": v for k, v in numbers.items() if math.isfinite(v)}, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 8) if math.isfinite(value) else str(value)
    return value


def _tensorboard_writer(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            f"output.tensorboard=true but TensorBoard is not available ({exc}); pip install tensorboard, "
            "or set output.tensorboard=auto"
        ) from None
    return SummaryWriter(log_dir=str(directory))


def _start_mlflow(run_config: dict[str, Any]):
    try:
        import mlflow
    except ImportError:
        raise ConfigError("output.mlflow=true needs MLflow: pip install mlflow (or set output.mlflow=false)") from None
    mlflow.start_run()
    # variant sections that are off are None
    flat = {f"{section}.{k}": v for section, values in run_config.items() for k, v in (values or {}).items()}
    mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})
    return mlflow
