"""plots/: real PNGs, importances only when they mean something, the rank plot from params or run configs."""

from __future__ import annotations

import numpy as np
import pytest
from optuna.trial import TrialState
from PIL import Image

from lorakit.sweep.report import lora_rank, param_importances, ranked_trials, write_report
from tests.sweep.report_fakes import add_trial, make_run_dir, make_study, summary

C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
PLOTS = ("optimization_history.png", "param_importances.png", "rank_vs_metric.png")


def _varied_study(tmp_path):
    """The metric follows lora.r closely; training.lr is noise. Plus a pruned and a failed trial."""
    study = make_study()
    rng = np.random.default_rng(0)
    for i, r in enumerate([2, 4, 8, 16, 32, 64, 4, 16, 64, 2]):
        lr = float(10 ** rng.uniform(-4, -2))
        add_trial(study, C, np.log2(r) / 6 + rng.normal(0, 0.01), params={"lora.r": r, "training.lr": lr},
                  run_dir=make_run_dir(tmp_path / f"trial-{i}", r=r, lr=lr, seed=i), summary=summary())
    add_trial(study, P, 0.1, params={"lora.r": 8, "training.lr": 1e-3}, pruned_at=2, intermediate={2: 0.1})
    add_trial(study, F, params={"lora.r": 8, "training.lr": 1e-3}, error="boom")
    return study


def _assert_png(path) -> None:
    with Image.open(path) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 150
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 20  # something is drawn, not a blank canvas
    assert path.stat().st_size > 5000


def test_three_plots_are_valid_pngs_linked_from_sweep_md(tmp_path):
    written = write_report(_varied_study(tmp_path), tmp_path / "sweep")
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    for name in PLOTS:
        _assert_png(written[f"plots/{name}"])
        assert f"](plots/{name})" in text


def test_importances_rank_the_param_that_drives_the_metric_first(tmp_path):
    study = _varied_study(tmp_path)
    importances, _ = param_importances(study, ranked_trials(study))
    assert list(importances) == ["lora.r", "training.lr"]
    assert importances["lora.r"] > 0.8 and sum(importances.values()) == pytest.approx(1.0)


def test_importances_are_skipped_with_the_reason_for_one_complete_trial(tmp_path):
    study = make_study()
    add_trial(study, C, 0.7, run_dir=make_run_dir(tmp_path / "run"), summary=summary())
    add_trial(study, P, 0.2, params={"lora.r": 4, "training.lr": 1e-4, "lora.target_modules": "qv"}, pruned_at=1)
    written = write_report(study, tmp_path / "sweep")
    assert "plots/param_importances.png" not in written
    assert not (tmp_path / "sweep" / "plots" / "param_importances.png").exists()
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "param importances: not drawn (1 complete trial(s); importances need at least 2)" in text


def test_importances_are_skipped_when_no_param_varies(tmp_path):
    study = make_study()
    for i in range(3):
        add_trial(study, C, 0.5 + i / 10, run_dir=make_run_dir(tmp_path / f"r{i}"), summary=summary())
    assert param_importances(study, ranked_trials(study)) == (
        {}, "no searched param took more than one value among the complete trials")


def test_a_plot_dropped_on_a_later_report_does_not_linger(tmp_path):
    sweep = tmp_path / "sweep"
    write_report(_varied_study(tmp_path / "a"), sweep)
    study = make_study()
    add_trial(study, C, 0.7, params={"training.lr": 1e-3}, run_dir=tmp_path / "gone", summary=summary())
    write_report(study, sweep)
    assert sorted(p.name for p in (sweep / "plots").iterdir()) == ["optimization_history.png"]
    text = (sweep / "sweep.md").read_text()
    assert "rank vs metric: not drawn (no scored trial has a lora.r" in text


def test_rank_comes_from_the_run_config_when_not_searched(tmp_path):
    study = make_study()
    for i, r in enumerate([4, 32]):
        add_trial(study, C, 0.5 + i / 10, params={"training.lr": 1e-3 * (i + 1)},
                  run_dir=make_run_dir(tmp_path / f"r{i}", r=r), summary=summary())
    add_trial(study, C, 0.4, params={"training.lr": 5e-3}, run_dir=tmp_path / "no-such-run", summary=summary())
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [lora_rank(t) for t in trials] == [4, 32, None]
    written = write_report(study, tmp_path / "sweep")
    _assert_png(written["plots/rank_vs_metric.png"])


def test_a_study_with_only_failures_draws_no_history(tmp_path):
    study = make_study()
    add_trial(study, F, error="boom")
    written = write_report(study, tmp_path / "sweep")
    assert [k for k in written if k.startswith("plots/")] == []
    assert "optimization history: not drawn (no trial reported a value yet)" in written["sweep.md"].read_text()
