"""output.report_to: TensorBoard, MLflow and W&B (offline) each get the run's numbers, learning rate and
evaluations included, read back with the tracker's own reader; a tracker asked for and missing, or one that cannot
start, is one line and leaves the output folder as it was; a failed run is marked failed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lorakit.cli.main import main
from lorakit.errors import ConfigError
from lorakit.train.config import load_config
from lorakit.train.hooks import TrainHook
from lorakit.train.metrics import read_metrics
from lorakit.train.run import train
from lorakit.train.trackers import chosen_trackers, installed
from tests.train.folder_helpers import one_line_error
from tests.train.runs import config_of, make_run
from tests.train.wandb_records import first, history, read_records

RUN = {"training": {"max_steps": 4, "eval_every": 2}}
ALL_TRACKERS = "output.tensorboard=auto"  # runs.py turns TensorBoard off the old way; report_to decides here


def logged(out: Path, kind: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in metrics.jsonl records of `kind`: the reference every tracker must match."""
    return [(r["step"], r[key]) for r in read_metrics(out / "metrics.jsonl") if r["kind"] == kind and key in r]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path / "wb"


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database otherwise
    return uri


def mlflow_run(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs(experiment_ids=["0"])
    return client, run


def test_tensorboard_gets_the_learning_rate_and_the_evaluations(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_run(tmp_path, "causal", **RUN)
    assert main(["train", str(config), ALL_TRACKERS, "output.report_to=[tensorboard]"]) == 0
    out = tmp_path / "out"
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for tag, kind, key in (("train/lr", "train", "lr"), ("eval/loss", "eval", "loss"),
                           ("eval/perplexity", "eval", "perplexity")):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in logged(out, kind, key)]
        assert [v for _, v in got] == pytest.approx([v for _, v in logged(out, kind, key)], rel=1e-6)  # float32


def test_mlflow_gets_the_run_name_params_learning_rate_and_evaluations(tmp_path, mlflow_store):
    config = make_run(tmp_path, "causal", **RUN)
    assert main(["train", str(config), ALL_TRACKERS, "output.report_to=mlflow", "output.run_name=colors"]) == 0
    client, run = mlflow_run(mlflow_store)
    assert run.info.run_name == "colors" and run.info.status == "FINISHED"
    assert run.data.params["lora.r"] == "4" and run.data.params["training.max_steps"] == "4"
    out = tmp_path / "out"
    for tag, kind, key in (("train/lr", "train", "lr"), ("train/loss", "train", "loss"), ("eval/loss", "eval", "loss")):
        history_ = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        assert history_ == logged(out, kind, key), tag
    assert not (out / "tensorboard").exists()  # report_to lists mlflow only


def test_wandb_offline_run_holds_loss_learning_rate_and_evaluations(tmp_path, offline_wandb):
    pytest.importorskip("wandb")
    config = make_run(tmp_path, "causal", **RUN)
    assert main(["train", str(config), ALL_TRACKERS, "output.report_to=[wandb]"]) == 0
    (run_file,) = offline_wandb.glob("wandb/offline-run-*/run-*.wandb")
    records = read_records(run_file)
    assert first(records, "run").display_name == "out"  # the default run name: the output folder's
    config_values = {u.key: u.value_json for u in first(records, "run").config.update}
    assert '"r":4' in config_values["lora"]  # the resolved config, by section
    rows = history(records)
    out = tmp_path / "out"
    for key, kind, field in (("train/loss", "train", "loss"), ("train/lr", "train", "lr"),
                             ("eval/loss", "eval", "loss")):
        assert [(r["_step"], r[key]) for r in rows if key in r] == logged(out, kind, field), key
    assert first(records, "exit").exit_code == 0


class Boom(TrainHook):
    def on_step_end(self, model, step):
        if step == 1:
            raise RuntimeError("boom")


def test_a_failed_run_is_marked_failed_in_mlflow_and_wandb(tmp_path, mlflow_store, offline_wandb):
    pytest.importorskip("wandb")
    cfg = config_of(make_run(tmp_path, "causal", **RUN), ALL_TRACKERS, "output.report_to=[mlflow,wandb]")
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, hooks=[Boom()])
    _, run = mlflow_run(mlflow_store)
    assert run.info.status == "FAILED"
    (run_file,) = offline_wandb.glob("wandb/offline-run-*/run-*.wandb")
    assert first(read_records(run_file), "exit").exit_code == 1


def test_a_tracker_asked_for_and_missing_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as when not installed
    assert main(["train", str(config), ALL_TRACKERS, "output.report_to=[tensorboard,wandb]"]) == 2
    error = one_line_error(capsys)
    assert "pip install wandb" in error and "output.report_to" in error
    assert not (tmp_path / "out").exists()


def test_a_tracker_that_cannot_start_leaves_the_folder_as_it_was(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    capsys.readouterr()
    assert main(["train", str(config), ALL_TRACKERS, "output.report_to=[mlflow]"]) == 2
    error = one_line_error(capsys)
    assert "MLflow could not start a run" in error and "MLFLOW_TRACKING_URI" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("value", "expected"), [
    ("auto", "auto"), ("none", []), ("[]", []), ("tensorboard", ["tensorboard"]), ("wandb,mlflow", ["wandb", "mlflow"]),
    ("[MLflow, wandb, mlflow]", ["mlflow", "wandb"]),
])
def test_report_to_spellings(value, expected):
    assert load_config(None, [f"output.report_to={value}"], base="").output.report_to == expected


def test_an_unknown_tracker_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"output\.report_to=.*'comet'.*tensorboard \| mlflow \| wandb"):
        load_config(None, ["output.report_to=[wandb,comet]"], base="")


@pytest.mark.parametrize("overrides", [
    ["output.tensorboard=true", "output.report_to=[wandb]"],
    ["output.tensorboard=false", "output.report_to=tensorboard"],
    ["output.mlflow=true", "output.report_to=none"],
])
def test_the_older_switches_contradicting_report_to_are_refused(overrides):
    with pytest.raises(ConfigError, match=r"contradicts output\.report_to"):
        load_config(None, overrides, base="")


@pytest.mark.parametrize(("overrides", "expected"), [
    (["output.tensorboard=true", "output.mlflow=true"], ["tensorboard", "mlflow"]),  # an old config, as before
    (["output.tensorboard=false"], []),
    (["output.report_to=none"], []),  # tensorboard: auto does not add it back
    (["output.tensorboard=true", "output.report_to=[wandb,tensorboard]"], ["wandb", "tensorboard"]),
])
def test_which_trackers_a_config_chooses(overrides, expected):
    assert chosen_trackers(load_config(None, overrides, base="").output) == expected


def test_report_to_auto_means_tensorboard_when_it_is_installed(monkeypatch):
    output = load_config(None, [], base="").output
    assert chosen_trackers(output) == (["tensorboard"] if installed("tensorboard") else [])
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert chosen_trackers(output) == []
