"""The metrics file survives kills (a cut last line is skipped, a resumed run drops what it will redo), and
optional sinks that are asked for but missing are clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lorakit.errors import ConfigError
from lorakit.train.metrics import MetricsLogger, read_metrics, truncate_after


def test_a_line_cut_by_a_kill_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "kind": "train", "loss": 2.0}) + "\n" + '{"step": 2, "kind": "tr')
    assert read_metrics(path) == [{"step": 1, "kind": "train", "loss": 2.0}]


def test_truncate_after_keeps_the_steps_a_resumed_run_will_not_redo(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard="false")
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


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_asked_for_but_missing(tmp_path):
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        MetricsLogger(tmp_path, enabled=True, tensorboard="true")


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")
def test_mlflow_asked_for_but_missing(tmp_path):
    with pytest.raises(ConfigError, match="pip install mlflow"):
        MetricsLogger(tmp_path, enabled=True, tensorboard="false", mlflow=True)
