"""The output folder: a start that fails or is refused leaves it exactly as it was; output.overwrite keeps the old
run whole until the new run has saved something to replace it with."""

from __future__ import annotations

import importlib.util

import pytest

from lorakit.cli.main import main
from lorakit.errors import LorakitError
from lorakit.train.hooks import TrainHook
from lorakit.train.metrics import read_metrics
from lorakit.train.run import train
from lorakit.train.state import CheckpointError
from lorakit.train.trainer import Trainer
from tests.train.folder_helpers import one_line_error, snapshot
from tests.train.runs import config_of, make_run, write_jsonl

no_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")


@no_mlflow
def test_mlflow_missing_fails_at_start_and_creates_nothing(tmp_path, capsys):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    capsys.readouterr()
    out = tmp_path / "new" / "run"
    assert main(["train", str(config), f"output.dir={out}", "output.mlflow=true"]) == 2
    assert "pip install mlflow" in one_line_error(capsys)
    assert not (tmp_path / "new").exists()
    assert main(["train", str(config), f"output.dir={out}"]) == 0  # the retry is not refused


@pytest.mark.parametrize("problem", ["bad data", "bad targets", "mlflow"])
def test_a_failed_start_writes_nothing_into_an_existing_folder(tmp_path, capsys, problem):
    if problem == "mlflow" and importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed")
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    override = {"bad data": f"data.train_file={bad}", "bad targets": "lora.target_modules=[nosuch]",
                "mlflow": "output.mlflow=true"}[problem]
    assert main(["train", str(config), override]) == 2
    one_line_error(capsys)
    assert snapshot(out) == before
    assert main(["train", str(config)]) == 0  # not "already holds a training run"


def finished_run(tmp_path, **training):
    """A finished run with checkpoints, best/ and metrics; returns (config path, snapshot of its folder)."""
    config = make_run(tmp_path, "causal", training={"max_steps": 4, "save_every": 2, "eval_every": 2, **training})
    train(config_of(config))
    return config, snapshot(tmp_path / "out")


class FailAt(TrainHook):
    """A run that fails after optimizer step `step` (a bug, a diverging loss, Ctrl-C)."""

    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.error = step, error

    def on_step_end(self, model, step):
        if step == self.step:
            raise self.error


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_overwriting_run_that_fails_before_saving_keeps_the_old_run(tmp_path, error):
    config, before = finished_run(tmp_path)
    fresh = config_of(config, "output.overwrite=true", "training.save_every=null", "training.eval_every=null",
                      "training.lr=5e-2")
    with pytest.raises(type(error)):
        Trainer(fresh, hooks=[FailAt(1, error)]).train()
    assert snapshot(tmp_path / "out") == before


def test_an_overwriting_start_that_fails_keeps_the_old_run(tmp_path, capsys):
    config, before = finished_run(tmp_path)
    capsys.readouterr()
    assert main(["train", str(config), "output.overwrite=true", "lora.target_modules=[nosuch]"]) == 2
    one_line_error(capsys)
    assert snapshot(tmp_path / "out") == before


def test_an_overwriting_run_killed_before_saving_gives_the_old_run_back_at_the_next_start(tmp_path):
    config, before = finished_run(tmp_path)
    killed = Trainer(config_of(config, "output.overwrite=true"))  # started: the old run is aside; then a SIGKILL
    assert snapshot(tmp_path / "out") != before
    del killed
    # the next start finds the old run as it was: here it is resumed, and it is finished already
    result = train(config_of(config), resume=True)
    assert result.summary["steps"] == 4
    assert snapshot(tmp_path / "out") == before


def test_an_overwriting_run_that_saves_replaces_the_old_run_entirely(tmp_path):
    config, before = finished_run(tmp_path)
    train(config_of(config, "output.overwrite=true", "training.max_steps=3", "training.save_every=null",
                    "training.eval_every=null"))
    out = tmp_path / "out"
    assert not (out / "checkpoints").exists() and not (out / ".replaced-run").exists()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]
    assert (out / "adapter_model.safetensors").read_bytes() != before["adapter_model.safetensors"]


def test_a_refused_resume_changes_nothing(tmp_path):
    config, before = finished_run(tmp_path)
    with pytest.raises(CheckpointError, match=r"different settings: \['lora.r'\]"):
        train(config_of(config, "lora.r=8", "training.max_steps=6"), resume=True)
    assert snapshot(tmp_path / "out") == before


def test_a_refused_plain_start_changes_nothing(tmp_path):
    config, before = finished_run(tmp_path)
    with pytest.raises(LorakitError, match="already holds a training run"):
        train(config_of(config, "training.lr=1e-3"))
    assert snapshot(tmp_path / "out") == before


def test_one_label_classification_data_fails_at_start_naming_label_and_file(tmp_path):
    config = make_run(tmp_path, "cls")
    rows = [{"text": f"the cat {i}", "label": "cat"} for i in range(16)]
    data = write_jsonl(tmp_path / "one-label.jsonl", rows)
    with pytest.raises(LorakitError, match=r"one-label\.jsonl: every row has the label 'cat'"):
        train(config_of(config, f"data.train_file={data}", "data.validation_file=null"))
    assert not (tmp_path / "out").exists()
