"""Fake sweeps for the report tests: in-memory Optuna studies whose trials point at small fake run folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from safetensors.numpy import save_file

from lorakit.train.config import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTRIBUTIONS = {
    "lora.r": IntDistribution(2, 64, log=True),
    "training.lr": FloatDistribution(1e-5, 1e-1, log=True),
    "lora.target_modules": CategoricalDistribution(["qv", "all-linear"]),
}
# the adapter files a run folder holds, and what best/ must not take from it
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "train_config.yaml", "summary.json"}
NOT_COPIED = {"metrics.jsonl", "curves.png", "spectrum.png", ".tmp-adapter_model.safetensors"}


def make_study(direction: str = "maximize", metric: str = "accuracy") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    study.set_user_attr("metric", metric)
    study.set_user_attr("config", "configs/seq-cls.yaml")
    study.set_user_attr("sampler", "tpe")
    study.set_user_attr("pruner", "median")
    study.set_user_attr("command", "lorakit sweep configs/seq-cls.yaml --space space.yaml --trials 8 --workers 2")
    return study


def make_run_dir(path: Path, r: int = 8, lr: float = 3e-3, seed: int = 0) -> Path:
    """A finished run's folder: its resolved config, a real (tiny) safetensors adapter, logs, a checkpoint."""
    path.mkdir(parents=True)
    config = TrainConfig().to_dict()
    config["lora"]["r"] = r
    config["training"]["lr"] = lr
    config["output"]["dir"] = str(path)
    (path / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r}), encoding="utf-8")
    rng = np.random.default_rng(seed)
    save_file({"base_model.model.q.lora_A.weight": rng.standard_normal((r, 16), dtype=np.float32),
               "base_model.model.q.lora_B.weight": rng.standard_normal((16, r), dtype=np.float32)},
              str(path / "adapter_model.safetensors"))
    (path / "summary.json").write_text(json.dumps({"steps": 10}), encoding="utf-8")
    (path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n', encoding="utf-8")
    (path / "curves.png").write_bytes(b"not part of the adapter")
    (path / "spectrum.png").write_bytes(b"not part of the adapter")
    (path / ".tmp-adapter_model.safetensors").write_bytes(b"a killed save's leftover")
    (path / "checkpoints" / "step-5").mkdir(parents=True)
    (path / "checkpoints" / "step-5" / "state.pt").write_bytes(b"x")
    return path


def summary(**values: Any) -> dict[str, Any]:
    base = {"trainable_params": 73728, "adapter_bytes": 303104, "time_s": 12.5, "peak_rss_mb": 812.4,
            "steps": 40, "metric": "accuracy", "final_eval": {"accuracy": 0.5}, "test_eval": None,
            "stopped_early": False}
    return {**base, **values}


def add_trial(study: optuna.Study, state: TrialState, value: float | None = None,
              params: dict[str, Any] | None = None, **user_attrs: Any) -> None:
    """One finished (or unfinished) trial; user_attrs as the sweep's worker records them."""
    params = params if params is not None else {"lora.r": 8, "training.lr": 3e-3, "lora.target_modules": "qv"}
    intermediate = user_attrs.pop("intermediate", {})
    user_attrs = {k: str(v) if isinstance(v, Path) else v for k, v in user_attrs.items()}
    study.add_trial(create_trial(state=state, value=value, params=params,
                                 distributions={k: DISTRIBUTIONS[k] for k in params},
                                 intermediate_values=intermediate, user_attrs=user_attrs))


def table(markdown: str) -> list[dict[str, str]]:
    """The rows of the trials table in sweep.md, as {column: cell}."""
    section = markdown.split("## Trials", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    header, rows = split[0], split[2:]
    return [dict(zip(header, row, strict=True)) for row in rows]
