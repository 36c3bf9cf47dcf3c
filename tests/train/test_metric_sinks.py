"""The older switch output.tensorboard=true still works: TensorBoard receives the same numbers as metrics.jsonl;
missing, it is a one-line error at start, before anything is written. (output.report_to, MLflow and W&B:
test_trackers.py.)"""

from __future__ import annotations

import sys

import pytest

from lorakit.cli.main import main
from lorakit.train.metrics import read_metrics
from tests.train.folder_helpers import one_line_error
from tests.train.runs import make_run


def test_tensorboard_true_logs_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_run(tmp_path, "causal", training={"max_steps": 3, "eval_every": 3})
    assert main(["train", str(config), "output.tensorboard=true"]) == 0
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    logged = {(e.step, e.value) for e in events.Scalars("train/loss")}
    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    expected = {(r["step"], r["loss"]) for r in records if r["kind"] == "train"}
    assert {s for s, _ in logged} == {1, 2, 3}
    for (step, value), (step2, value2) in zip(sorted(logged), sorted(expected), strict=True):
        assert step == step2 and value == pytest.approx(value2, rel=1e-6)  # float32 in the event file
    assert [e.step for e in events.Scalars("eval/loss")] == [3]


def test_tensorboard_true_but_missing_is_an_error_at_start(tmp_path, capsys, monkeypatch):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    assert main(["train", str(config), "output.tensorboard=yes"]) == 2
    assert "pip install tensorboard" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
