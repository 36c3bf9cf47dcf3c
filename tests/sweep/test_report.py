"""sweep.md: the ranking, the numbers in the table, the header and the failed-trials list."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from lorakit.sweep.report import write_report
from tests.sweep.report_fakes import add_trial, make_run_dir, make_study, summary, table

C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL


def _mixed_study(tmp_path, direction: str, values: list[float]):
    """Complete trials with `values` (numbers 0..), then pruned, failed, running and waiting ones."""
    study = make_study(direction=direction)
    for i, value in enumerate(values):
        add_trial(study, C, value, run_dir=make_run_dir(tmp_path / f"trial-{i}", seed=i), wall_s=10.0 + i,
                  summary=summary())
    n = len(values)
    add_trial(study, P, values[0], pruned_at=2, intermediate={1: 0.0, 2: values[0]}, wall_s=3.0)  # n
    add_trial(study, F, error="boom", wall_s=1.0)  # n + 1
    add_trial(study, TrialState.RUNNING, params={})  # n + 2
    add_trial(study, P, None, pruned_at=1)  # n + 3: pruned before reporting anything
    add_trial(study, TrialState.WAITING, params={})  # n + 4
    add_trial(study, P, values[1], pruned_at=4, intermediate={4: values[1]})  # n + 5
    return study, n


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_rows_are_ranked_complete_by_value_then_pruned_then_failed_then_unfinished(tmp_path, direction):
    values = [0.5, 0.9, 0.7, 0.6]
    study, n = _mixed_study(tmp_path, direction, values)
    write_report(study, tmp_path / "sweep")
    rows = table((tmp_path / "sweep" / "sweep.md").read_text())

    complete = sorted(range(len(values)), key=lambda i: values[i], reverse=direction == "maximize")
    pruned_values = {n: values[0], n + 5: values[1]}  # the pruned trial without a value goes after both
    pruned = sorted(pruned_values, key=pruned_values.get, reverse=direction == "maximize")
    expected = [*complete, *pruned, n + 3, n + 1, n + 2, n + 4]
    assert [int(row["trial"]) for row in rows] == expected
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"] + ["-"] * 6
    assert rows[len(values)]["state"].startswith("pruned at step")
    assert [row["state"] for row in rows[-3:]] == ["failed", "running", "waiting"]


def test_table_cells_equal_the_trial_numbers(tmp_path):
    study = make_study()
    add_trial(study, C, 0.81234, params={"lora.r": 16, "training.lr": 0.003, "lora.target_modules": "qv"},
              run_dir=make_run_dir(tmp_path / "a"), wall_s=61.25,
              summary=summary(trainable_params=73728, adapter_bytes=303104, peak_rss_mb=812.4, steps=40,
                              test_eval={"accuracy": 0.7777, "loss": 0.4}, stopped_early=True))
    add_trial(study, P, 0.25, params={"lora.r": 4, "training.lr": 2.5e-4, "lora.target_modules": "all-linear"},
              pruned_at=3, intermediate={3: 0.25}, wall_s=5.0,
              summary=summary(trainable_params=1_234_567, adapter_bytes=1536, peak_rss_mb=700.0, steps=3))
    write_report(study, tmp_path / "sweep")
    best, pruned = table((tmp_path / "sweep" / "sweep.md").read_text())

    assert float(best["accuracy"]) == pytest.approx(0.81234, abs=5e-5) and best["accuracy"] == "0.8123"
    assert float(best["test accuracy"]) == pytest.approx(0.7777)
    assert pruned["test accuracy"] == "-"  # a trial without test_eval
    assert (best["lora.r"], best["training.lr"], best["lora.target_modules"]) == ("16", "3e-03", "qv")
    assert (pruned["lora.r"], pruned["training.lr"], pruned["lora.target_modules"]) == ("4", "2.5e-04", "all-linear")
    assert float(pruned["training.lr"]) == 2.5e-4
    assert best["trainable"] == "73.7k" and pruned["trainable"] == "1.2M"  # 73,728 / 1e3; 1,234,567 / 1e6
    assert best["adapter"] == "296 KiB" and pruned["adapter"] == "1.5 KiB"  # 303,104 / 1024; 1,536 / 1024
    assert float(best["time (s)"]) == pytest.approx(61.25, abs=0.05)  # the trial's wall time
    assert (best["peak MiB"], best["steps"], pruned["steps"]) == ("812", "40", "3")
    assert best["state"] == "complete (stopped early)" and pruned["state"] == "pruned at step 3"


def test_a_trial_without_summary_shows_dashes(tmp_path):
    study = make_study()
    add_trial(study, F, error="CUDA out of memory")
    write_report(study, tmp_path / "sweep")
    (row,) = table((tmp_path / "sweep" / "sweep.md").read_text())
    assert "test accuracy" not in row  # no trial has test_eval: no column
    assert [row[k] for k in ("accuracy", "trainable", "adapter", "time (s)", "peak MiB", "steps")] == ["-"] * 6


def test_header_counts_states_sums_wall_time_and_names_the_best(tmp_path):
    study, _ = _mixed_study(tmp_path, "maximize", [0.5, 0.9])
    write_report(study, tmp_path / "sweep")
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    header = text.split("## Trials")[0]
    assert study.user_attrs["command"] in header and "configs/seq-cls.yaml" in header
    assert "sampler: tpe, pruner: median" in header and "maximize accuracy" in header
    assert "- trials: 8 (2 complete, 3 pruned, 1 failed, 1 running, 1 waiting)" in header
    wall = 10.0 + 11.0 + 3.0 + 1.0  # the wall_s of every trial that has one
    assert f"{wall:.1f}s" in header
    assert "best: trial 1 reached accuracy 0.9000 with lora.r=8, training.lr=3e-03, lora.target_modules=qv." in header


def test_failed_trials_list_one_line_each(tmp_path):
    study = make_study()
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: CUDA out of memory\n'
    add_trial(study, F, error=traceback)
    add_trial(study, F, error="output.dir='x' already holds a training run\n(second line of the message)")
    add_trial(study, F, error="y" * 500)
    add_trial(study, F)  # no error recorded
    write_report(study, tmp_path / "sweep")
    section = (tmp_path / "sweep" / "sweep.md").read_text().split("## Failed trials")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert lines[0] == "- trial 0: RuntimeError: CUDA out of memory"
    assert lines[1] == "- trial 1: output.dir='x' already holds a training run"
    assert lines[2].startswith("- trial 2: yyy") and len(lines[2]) < 220 and lines[2].endswith("…")
    assert lines[3] == "- trial 3: (no error recorded)"


def test_no_complete_trial_says_so_and_leaves_an_older_best(tmp_path):
    study = make_study()
    add_trial(study, F, error="boom", run_dir=make_run_dir(tmp_path / "run"))
    add_trial(study, P, 0.4, pruned_at=1, run_dir=tmp_path / "run")
    old_best = tmp_path / "sweep" / "best"
    old_best.mkdir(parents=True)
    (old_best / "adapter_model.safetensors").write_bytes(b"from an earlier sweep")
    written = write_report(study, tmp_path / "sweep")

    assert "best" not in written and "best_config.yaml" not in written
    assert not (tmp_path / "sweep" / "best_config.yaml").exists()
    assert (old_best / "adapter_model.safetensors").read_bytes() == b"from an earlier sweep"
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "No trial completed, so there is no best_config.yaml or best/" in text
    assert "best: none (no trial completed)" in text


def test_a_pruned_trial_without_pruned_at_shows_its_last_reported_step_and_value(tmp_path):
    study = make_study()
    add_trial(study, P, None, intermediate={1: 0.3, 5: 0.45, 3: 0.4})
    write_report(study, tmp_path / "sweep")
    (row,) = table((tmp_path / "sweep" / "sweep.md").read_text())
    assert (row["state"], row["accuracy"]) == ("pruned at step 5", "0.4500")


def test_a_trial_that_repeated_a_finished_one_says_so(tmp_path):
    study = make_study()
    run_dir = make_run_dir(tmp_path / "run")
    add_trial(study, C, 0.6, run_dir=run_dir, summary=summary(), wall_s=30.0)
    add_trial(study, C, 0.6, run_dir=run_dir, summary=summary(), wall_s=0.0, same_as=0)  # as the worker records it
    write_report(study, tmp_path / "sweep")
    first, second = table((tmp_path / "sweep" / "sweep.md").read_text())
    assert (first["trial"], first["state"]) == ("0", "complete")  # a tie goes to the earlier trial
    assert (second["trial"], second["state"]) == ("1", "complete (same values as trial 0)")
