"""A trial's pruning: its evaluations reach the study, and the pruner's "stop" ends the run early, adapter saved."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import FloatDistribution

from lorakit.sweep.trial import PruningHook
from lorakit.train.config import load_config
from lorakit.train.run import train
from tests.train.runs import make_run


def study_with_better_trials(metric_value: float) -> optuna.Study:
    """Three finished trials whose eval loss was `metric_value` at every step: a median pruner prunes any trial
    that does worse at the same step."""
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(
            params={"training.lr": 1e-2}, distributions={"training.lr": FloatDistribution(1e-4, 1e-1)},
            value=metric_value, intermediate_values={step: metric_value for step in (2, 4, 6, 8)}))
    return study


def test_a_trial_worse_than_the_median_stops_at_its_first_eval(tmp_path):
    config = make_run(tmp_path, "cls", training={"max_steps": 8, "eval_every": 2, "metric": "loss"})
    study = study_with_better_trials(0.0)  # nothing reaches loss 0: pruned at step 2
    trial = study.ask({"training.lr": FloatDistribution(1e-4, 1e-1)})
    hook = PruningHook(trial, "loss", "median")
    result = train(load_config(config), hooks=[hook])
    assert hook.pruned_at == 2
    assert result.summary["steps"] == 2 and result.summary["stopped_early"]
    evals = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2]
    seen = study.trials[-1].intermediate_values  # what the pruner saw is the run's eval (the file rounds it)
    assert list(seen) == [2] and seen[2] == pytest.approx(evals[0]["loss"], rel=1e-6)
    assert (result.output_dir / "adapter_model.safetensors").is_file()  # a pruned run is still a run folder


def test_a_trial_better_than_the_median_runs_to_the_end(tmp_path):
    config = make_run(tmp_path, "cls", training={"max_steps": 6, "eval_every": 2, "metric": "loss"})
    study = study_with_better_trials(1e9)  # every eval beats these
    trial = study.ask({"training.lr": FloatDistribution(1e-4, 1e-1)})
    hook = PruningHook(trial, "loss", "median")
    result = train(load_config(config), hooks=[hook])
    assert hook.pruned_at is None
    assert result.summary["steps"] == 6 and not result.summary["stopped_early"]
    assert sorted(study.trials[-1].intermediate_values) == [2, 4, 6]


def test_the_last_evaluation_is_reported_but_never_prunes(tmp_path):
    config = make_run(tmp_path, "cls", training={"max_steps": 2, "eval_every": 2, "metric": "loss"})
    study = study_with_better_trials(0.0)  # would prune any earlier evaluation
    trial = study.ask({"training.lr": FloatDistribution(1e-4, 1e-1)})
    hook = PruningHook(trial, "loss", "median")
    result = train(load_config(config), hooks=[hook])
    assert hook.pruned_at is None and not result.summary["stopped_early"]  # its steps are spent: a complete run
    assert list(study.trials[-1].intermediate_values) == [2]
