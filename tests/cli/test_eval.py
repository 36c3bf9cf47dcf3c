"""`lorakit eval`: a trained run, rebuilt from its directory (train_config.yaml + adapter on disk), scores its
validation data exactly as the trainer's final evaluation did (a second path: reload from files)."""

from __future__ import annotations

import json

import pytest

from lorakit.cli.main import main
from lorakit.train.run import train
from tests.train.runs import config_of, make_run


@pytest.fixture
def trained(tmp_path):
    return train(config_of(make_run(tmp_path, "cls"), "training.max_steps=4", "training.lr=5e-2"))


def test_eval_of_a_run_directory_reproduces_the_final_evaluation(trained, capsys):
    assert main(["eval", str(trained.output_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 16
    for key in ("loss", "accuracy", "f1"):
        assert metrics[key] == pytest.approx(trained.final_eval[key], rel=1e-5), key


def test_eval_on_another_file_and_without_the_adapter(trained, tmp_path, capsys):
    data = str(tmp_path / "cls-val.jsonl")
    assert main(["eval", str(trained.output_dir), "--data", data, "--json"]) == 0
    with_adapter = json.loads(capsys.readouterr().out)
    assert with_adapter["loss"] == pytest.approx(trained.final_eval["loss"], rel=1e-5)  # the same rows
    assert main(["eval", str(trained.output_dir), "--json", "--adapter", "none", "--data", data]) == 0
    without = json.loads(capsys.readouterr().out)
    assert without["loss"] != pytest.approx(with_adapter["loss"])


def test_eval_of_something_else_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "expected a training output directory" in err and err.count("\n") == 1
