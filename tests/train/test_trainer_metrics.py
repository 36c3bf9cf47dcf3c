"""The metrics file survives kills (a cut last line is skipped, a resumed run drops what it will redo), and
optional sinks that are asked for but missing are clear errors."""

from __future__ import annotations

import json
import re
import sys

import pytest

from lorakit.errors import ConfigError
from lorakit.train.config import load_config
from lorakit.train.metrics import MetricsLogger, check_sinks, read_metrics, truncate_after
from lorakit.train.trackers import TRACKERS, TrackerKind


def test_a_line_cut_by_a_kill_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "kind": "train", "loss": 2.0}) + "\n" + '{"step": 2, "kind": "tr')
    assert read_metrics(path) == [{"step": 1, "kind": "train", "loss": 2.0}]


def test_truncate_after_keeps_the_steps_a_resumed_run_will_not_redo(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    for step in (1, 2, 3, 4):
        logger.log(step, "train", {"loss": 1.0 / step, "grad_norm": None})
    logger.log(4, "eval", {"loss": float("nan")})
    logger.close()
    truncate_after(tmp_path / "metrics.jsonl", 2)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[1] == {"step": 2, "kind": "train", "loss": 0.5, "grad_norm": None}


def test_other_processes_write_nothing(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=False)
    logger.log(1, "train", {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize(("overrides", "missing", "hint"), [
    (["output.tensorboard=true"], "tensorboard", "pip install tensorboard, or set output.tensorboard=auto"),
    (["output.mlflow=true"], "mlflow", "pip install mlflow"),
    (["output.report_to=[wandb]"], "wandb", "pip install wandb, or remove wandb from output.report_to"),
])
def test_a_tracker_asked_for_but_missing(monkeypatch, overrides, missing, hint):
    monkeypatch.setitem(sys.modules, missing, None)  # import fails as when not installed
    with pytest.raises(ConfigError, match=re.escape(hint)):
        check_sinks(load_config(None, overrides, base="").output)


def test_every_record_reaches_every_tracker(tmp_path, monkeypatch):
    seen = []

    class Recorder:
        where = "a recorder"

        def __init__(self, run):
            seen.append(("start", run.name))

        def log(self, step, kind, numbers):
            seen.append((step, kind, numbers))

        def close(self, failed):
            seen.append(("close", failed))

    monkeypatch.setitem(TRACKERS, "wandb", TrackerKind(("wandb",), "pip install wandb", Recorder))
    logger = MetricsLogger(tmp_path, enabled=True, trackers=["wandb"], run_name="r1")
    logger.log(1, "train", {"loss": 0.5, "lr": 1e-3, "grad_norm": None, "epoch": 0})
    logger.log(1, "eval", {"loss": float("nan"), "accuracy": 0.75})
    logger.close()
    # numbers only (None and NaN, written to the file as null and "nan", are not numbers), as floats
    assert seen == [("start", "r1"), (1, "train", {"loss": 0.5, "lr": 1e-3, "epoch": 0.0}),
                    (1, "eval", {"accuracy": 0.75}), ("close", False)]
