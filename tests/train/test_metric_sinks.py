"""TensorBoard and MLflow sinks, when asked for: they receive the same numbers as metrics.jsonl; one that is
missing is a one-line error at start, before anything is written."""

from __future__ import annotations

import importlib.machinery
import sys
import types

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


class FakeMlflow(types.ModuleType):
    """Records what the run sends to MLflow."""

    def __init__(self) -> None:
        super().__init__("mlflow")
        self.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)
        self.calls: list[tuple] = []

    def start_run(self):
        self.calls.append(("start_run",))

    def log_params(self, params):
        self.calls.append(("log_params", params))

    def log_metrics(self, metrics, step):
        self.calls.append(("log_metrics", step, metrics))

    def end_run(self):
        self.calls.append(("end_run",))


def test_mlflow_true_logs_params_and_the_metrics(tmp_path, monkeypatch):
    fake = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    config = make_run(tmp_path, "causal", training={"max_steps": 2})
    assert main(["train", str(config), "output.mlflow=on"]) == 0
    assert fake.calls[0] == ("start_run",) and fake.calls[-1] == ("end_run",)
    assert fake.calls[1][0] == "log_params" and fake.calls[1][1]["lora.r"] == "4"
    sent = [(step, m["train_loss"]) for name, step, m in (c for c in fake.calls if c[0] == "log_metrics")
            if "train_loss" in m]
    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert sent == [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
