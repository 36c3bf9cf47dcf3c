"""The report over a real (tiny) training run: best/ evaluates like the run itself, best_config.yaml loads."""

from __future__ import annotations

import json

import pytest
from optuna.trial import TrialState

from lorakit.cli.main import main
from lorakit.sweep.report import write_report
from lorakit.train.config import load_config
from lorakit.train.run import train
from tests.sweep.report_fakes import add_trial, make_study, table
from tests.train.runs import config_of, make_run


@pytest.fixture
def trained(tmp_path):
    return train(config_of(make_run(tmp_path, "cls"), "training.max_steps=4", "training.lr=5e-2"))


def test_best_dir_of_a_real_run_evaluates_to_the_trials_value(trained, tmp_path, capsys):
    run_dir = trained.output_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    study = make_study()
    add_trial(study, TrialState.COMPLETE, summary["final_eval"]["accuracy"], params={"training.lr": 5e-2},
              run_dir=run_dir, summary=summary, wall_s=4.0)
    sweep = tmp_path / "sweep"
    written = write_report(study, sweep)

    assert main(["eval", str(written["best"]), "--json"]) == 0  # rebuilt from best/ alone
    metrics = json.loads(capsys.readouterr().out)
    for key in ("loss", "accuracy", "f1"):
        assert metrics[key] == pytest.approx(trained.final_eval[key], rel=1e-5), key
    cfg = load_config(written["best_config.yaml"])
    assert cfg.output.dir == str(sweep / "best-run") and cfg.training.max_steps == 4
    (row,) = table(written["sweep.md"].read_text())
    assert row["steps"] == "4" and row["accuracy"] == f"{trained.final_eval['accuracy']:.4f}"
