"""Experiment trackers a run's metrics also go to: TensorBoard, MLflow, Weights & Biases (output.report_to).

Each tracker is started once on the main process and gets every record metrics.jsonl gets, as `kind/name` scalars
(train/loss, train/lr, train/grad_norm, eval/loss, eval/accuracy, test/...) at the optimizer step. A tracker
that is asked for and not installed is refused before the run writes anything (check_trackers); one that cannot
start (an unreachable MLflow server, say) is a one-line TrackerError, and the run folder is put back.

Adding a tracker: a class with start / log / close and one TRACKERS entry; nothing else names it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lorakit.errors import ConfigError, LorakitError


class TrackerError(LorakitError):
    """A tracker that was asked for could not start a run (its server, its files)."""


@dataclass(frozen=True)
class RunInfo:
    out_dir: Path
    name: str  # output.run_name, or the output folder's name
    config: dict[str, Any]  # the resolved config, by section


class Tracker(Protocol):
    where: str  # a few words for the start-up summary: where the numbers go

    def log(self, step: int, kind: str, numbers: dict[str, float]) -> None: ...

    def close(self, failed: bool) -> None: ...


class TensorBoardTracker:
    def __init__(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        directory = run.out_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(directory))
        self.where = f"tensorboard ({directory})"

    def log(self, step: int, kind: str, numbers: dict[str, float]) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self, failed: bool) -> None:
        self.writer.close()


class MlflowTracker:
    def __init__(self, run: RunInfo) -> None:
        import mlflow

        self.mlflow = mlflow
        try:  # nested under a run the caller already started (a notebook, a sweep), else a top-level run
            active = mlflow.start_run(run_name=run.name, nested=mlflow.active_run() is not None)
        except Exception as exc:  # MLflow's errors name the store; the user needs one line
            raise TrackerError(f"output.report_to has mlflow, but MLflow could not start a run at "
                               f"{mlflow.get_tracking_uri()!r} ({_first_sentence(exc)}); set MLFLOW_TRACKING_URI to "
                               "a tracking server or store, or remove mlflow from output.report_to") from None
        self.run_id = active.info.run_id
        # variant sections that are off are None
        flat = {f"{section}.{k}": v for section, values in run.config.items() for k, v in (values or {}).items()}
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()}, run_id=self.run_id)
        self.where = f"mlflow (run {self.run_id} at {mlflow.get_tracking_uri()})"

    def log(self, step: int, kind: str, numbers: dict[str, float]) -> None:
        finite = {f"{kind}/{k}": v for k, v in numbers.items() if math.isfinite(v)}  # MLflow refuses NaN / inf
        if finite:
            self.mlflow.log_metrics(finite, step=step, run_id=self.run_id)

    def close(self, failed: bool) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


class WandbTracker:
    def __init__(self, run: RunInfo) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        directory = Path(os.environ.get("WANDB_DIR") or run.out_dir)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            # console="off": W&B would otherwise wrap sys.stdout / stderr to copy the terminal into the run
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lorakit"), name=run.name,
                                  dir=str(directory), config=run.config, mode=mode, reinit="create_new",
                                  settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        except Exception as exc:  # a bad key or mode, an unreachable server: one line
            raise TrackerError(f"output.report_to has wandb, but W&B could not start a run in {mode} mode "
                               f"({_first_sentence(exc)}); set WANDB_MODE=offline to log to local files, or remove "
                               "wandb from output.report_to") from None
        run_dir = Path(getattr(self.run, "dir", None) or directory / "wandb" / "files").parent
        self.where = f"wandb {mode}: {run_dir}" + (f" (`wandb sync {run_dir}` uploads it)" if mode == "offline" else "")

    def log(self, step: int, kind: str, numbers: dict[str, float]) -> None:
        self.run.log({f"{kind}/{k}": v for k, v in numbers.items()}, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


@dataclass(frozen=True)
class TrackerKind:
    modules: tuple[str, ...]  # what must import for the tracker to work
    install: str  # the pip line that provides them
    start: Callable[[RunInfo], Tracker]


TRACKERS: dict[str, TrackerKind] = {
    "tensorboard": TrackerKind(("tensorboard", "torch.utils.tensorboard"), "pip install tensorboard",
                               TensorBoardTracker),
    "mlflow": TrackerKind(("mlflow",), "pip install mlflow-skinny (or mlflow)", MlflowTracker),
    "wandb": TrackerKind(("wandb",), "pip install wandb", WandbTracker),
}


def chosen_trackers(output: Any) -> list[str]:
    """The trackers of a run (output: an OutputConfig): its report_to list, or for "auto" TensorBoard when it is
    installed, plus what the older output.tensorboard / output.mlflow switches ask for."""
    if output.report_to != "auto":
        return list(output.report_to)
    names = []
    if output.tensorboard == "true" or (output.tensorboard == "auto" and installed("tensorboard")):
        names.append("tensorboard")
    if output.mlflow:
        names.append("mlflow")
    return names


def installed(name: str) -> bool:
    """Whether every module tracker `name` needs can be imported (found, and not blocked in sys.modules)."""
    for module in TRACKERS[name].modules:
        if module in sys.modules:
            if sys.modules[module] is None:
                return False
            continue
        try:
            if importlib.util.find_spec(module) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def check_trackers(output: Any) -> None:
    """Refuse, before a run writes anything, a tracker that is asked for and not installed."""
    for name in chosen_trackers(output):
        if not installed(name):
            asked, way_out = _asked_by(output, name)
            raise ConfigError(f"{asked} needs {name}, which is not installed: {TRACKERS[name].install}, or {way_out}")


def start_trackers(names: list[str], run: RunInfo) -> list[Tracker]:
    """Start each tracker; if one fails, the ones already started are closed (as failed) first."""
    started: list[Tracker] = []
    try:
        for name in names:
            started.append(TRACKERS[name].start(run))
    except BaseException:
        for tracker in started:
            tracker.close(failed=True)
        raise
    return started


def _asked_by(output: Any, name: str) -> tuple[str, str]:
    """(the setting that asked for tracker `name`, how to stop asking)."""
    if output.report_to != "auto":
        return f"output.report_to={output.report_to}", f"remove {name} from output.report_to"
    if name == "tensorboard":
        return "output.tensorboard=true", "set output.tensorboard=auto"
    return f"output.{name}=true", f"set output.{name}=false"


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.split(". ")[0][:300]
