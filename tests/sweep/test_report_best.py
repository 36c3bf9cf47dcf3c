"""best_config.yaml and best/: the best complete trial's resolved config and adapter files, copied exactly."""

from __future__ import annotations

import yaml
from optuna.trial import TrialState

from lorakit.sweep.report import write_report
from lorakit.train.config import load_config
from tests.sweep.report_fakes import ADAPTER_FILES, add_trial, make_run_dir, make_study, summary

C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL


def _study(tmp_path, direction: str = "maximize"):
    """Trial 1 is the best complete one either way round (a pruned trial beats it, and must not be chosen)."""
    study = make_study(direction=direction, metric="accuracy" if direction == "maximize" else "loss")
    sign = 1 if direction == "maximize" else -1
    for number, (value, r) in enumerate([(0.6, 4), (0.8, 16), (0.7, 8)]):
        add_trial(study, C, sign * value, params={"lora.r": r, "training.lr": 1e-3},
                  run_dir=make_run_dir(tmp_path / f"trial-{number}", r=r, lr=1e-3, seed=number), summary=summary())
    add_trial(study, P, sign * 0.99, params={"lora.r": 32, "training.lr": 1e-3}, pruned_at=1,
              run_dir=make_run_dir(tmp_path / "trial-3", r=32, seed=3))
    return study


def test_best_config_is_the_best_runs_config_with_output_dir_moved(tmp_path):
    for direction in ("maximize", "minimize"):
        sweep = tmp_path / direction
        written = write_report(_study(tmp_path / f"runs-{direction}", direction), sweep)
        text = written["best_config.yaml"].read_text()
        run_config = yaml.safe_load((tmp_path / f"runs-{direction}" / "trial-1" / "train_config.yaml").read_text())
        best_config = yaml.safe_load(text)

        assert best_config["output"].pop("dir") == str(sweep / "best-run")
        run_config["output"].pop("dir")
        assert best_config == run_config
        header = text.split("\nmodel:")[0].splitlines()
        assert all(line.startswith("# ") for line in header)  # comments only at the top
        assert "trial 1" in header[0] and "0.8000" in header[0] and "lora.r=16" in header[1]
        assert "lorakit train best_config.yaml retrains it" in text


def test_best_config_loads_as_a_training_config(tmp_path):
    written = write_report(_study(tmp_path / "runs"), tmp_path / "sweep")
    cfg = load_config(written["best_config.yaml"])
    assert cfg.output.dir == str(tmp_path / "sweep" / "best-run")
    assert cfg.lora.r == 16


def test_best_dir_holds_exactly_the_adapter_files_with_identical_bytes(tmp_path):
    written = write_report(_study(tmp_path / "runs"), tmp_path / "sweep")
    run_dir = tmp_path / "runs" / "trial-1"
    best = written["best"]
    assert {p.name for p in best.iterdir()} == ADAPTER_FILES  # no logs, plots, checkpoints/ or leftovers
    for name in ADAPTER_FILES:
        assert (best / name).read_bytes() == (run_dir / name).read_bytes()


def test_a_newer_best_replaces_the_old_best_dir_whole(tmp_path):
    old = tmp_path / "sweep" / "best"
    old.mkdir(parents=True)
    (old / "adapter_model.safetensors").write_bytes(b"old")
    (old / "stale_file.txt").write_text("from an earlier sweep")
    write_report(_study(tmp_path / "runs"), tmp_path / "sweep")
    assert {p.name for p in old.iterdir()} == ADAPTER_FILES
    assert [p.name for p in (tmp_path / "sweep").iterdir() if p.name.startswith(".")] == []  # no temp folders
    assert (old / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "runs" / "trial-1" / "adapter_model.safetensors").read_bytes()


def test_best_section_names_the_files_and_the_retrain_command(tmp_path):
    sweep = tmp_path / "sweep"
    write_report(_study(tmp_path / "runs"), sweep)
    best = (sweep / "sweep.md").read_text().split("## Best")[1]
    assert best.lstrip().startswith("Trial 1 reached accuracy 0.8000")
    assert f"`{sweep / 'best_config.yaml'}`" in best and f"`{sweep / 'best'}/`" in best
    assert f"lorakit train {sweep / 'best_config.yaml'}" in best


def test_a_missing_run_folder_is_reported_not_raised(tmp_path):
    study = make_study()
    add_trial(study, C, 0.9, run_dir=tmp_path / "deleted-run", summary=summary())
    add_trial(study, C, 0.1, run_dir=make_run_dir(tmp_path / "other"), summary=summary())
    written = write_report(study, tmp_path / "sweep")
    assert "best" not in written and "best_config.yaml" not in written
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    assert f"the best trial's run folder {tmp_path / 'deleted-run'} is missing" in text


def test_a_run_folder_without_config_still_gives_best_dir(tmp_path):
    study = make_study()
    run_dir = make_run_dir(tmp_path / "run")
    (run_dir / "train_config.yaml").unlink()
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "best_config.yaml").write_text("# from an earlier best: would not match best/\n")
    add_trial(study, C, 0.9, run_dir=run_dir, summary=summary())
    written = write_report(study, tmp_path / "sweep")
    assert "best_config.yaml" not in written and not (tmp_path / "sweep" / "best_config.yaml").exists()
    assert {p.name for p in written["best"].iterdir()} == ADAPTER_FILES - {"train_config.yaml"}
    assert "train_config.yaml is missing or not a YAML mapping" in (tmp_path / "sweep" / "sweep.md").read_text()


def test_a_named_adapters_folder_comes_along(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    config = yaml.safe_load((run_dir / "train_config.yaml").read_text())
    config["output"]["adapter_name"] = "sql"
    (run_dir / "train_config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "sql").mkdir()
    (run_dir / "sql" / "adapter_model.safetensors").write_bytes(b"the named adapter's weights")
    study = make_study()
    add_trial(study, C, 0.9, run_dir=run_dir, summary=summary())
    best = write_report(study, tmp_path / "sweep")["best"]
    assert {p.name for p in best.iterdir()} == ADAPTER_FILES | {"sql"}
    assert (best / "sql" / "adapter_model.safetensors").read_bytes() == b"the named adapter's weights"
