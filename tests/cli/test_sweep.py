"""`lorakit sweep`'s refusals: each a one-line error before any trial runs, and nothing written."""

from __future__ import annotations

import pytest
import yaml

from lorakit.cli.main import main
from tests.cli.cli_helpers import one_error_line
from tests.train.runs import make_run


@pytest.fixture
def config(tmp_path):
    return make_run(tmp_path, "cls")


def space_file(tmp_path, space) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return str(path)


def refused(capsys, argv, tmp_path) -> str:
    out = tmp_path / "sweep"
    assert main(["sweep", *argv, "--out", str(out)]) == 2
    assert not out.exists()  # nothing written
    return one_error_line(capsys, "sweep")


def test_the_space_is_required(config, capsys, tmp_path):
    assert "--space SPACE.yaml is needed" in refused(capsys, [str(config)], tmp_path)


def test_tpe_needs_a_trial_count(config, capsys, tmp_path):
    space = space_file(tmp_path, {"lora.r": [2, 4]})
    assert "--trials N is needed with --sampler tpe" in refused(capsys, [str(config), "--space", space], tmp_path)


def test_a_grid_cannot_enumerate_a_continuous_range(config, capsys, tmp_path):
    space = space_file(tmp_path, {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    err = refused(capsys, [str(config), "--space", space, "--sampler", "grid"], tmp_path)
    assert "training.lr is a continuous range" in err


def test_a_value_that_makes_an_invalid_config_is_named(config, capsys, tmp_path):
    space = space_file(tmp_path, {"lora.r": [4, 0]})
    err = refused(capsys, [str(config), "--space", space, "--trials", "2"], tmp_path)
    assert "lora.r = 0 does not make a valid config" in err


def test_an_unknown_key_is_named(config, capsys, tmp_path):
    space = space_file(tmp_path, {"lora.rank": [4, 8]})
    err = refused(capsys, [str(config), "--space", space, "--trials", "2"], tmp_path)
    assert "lora.rank" in err


def test_a_storage_that_cannot_open_is_one_line_without_its_password(config, capsys, tmp_path):
    space = space_file(tmp_path, {"lora.r": [2, 4]})
    err = refused(capsys, [str(config), "--space", space, "--trials", "2", "--storage",
                           "postgresql+psycopg://me:secret@127.0.0.1:9/db"], tmp_path)
    assert "cannot open it" in err and "secret" not in err


def test_report_only_needs_an_existing_study(config, capsys, tmp_path):
    (tmp_path / "sweep").mkdir()
    assert main(["sweep", str(config), "--out", str(tmp_path / "sweep"), "--report-only"]) == 2
    assert "no study 'sweep'" in one_error_line(capsys, "sweep")


def test_out_must_not_be_a_file(config, capsys, tmp_path):
    (tmp_path / "taken").write_text("x")
    space = space_file(tmp_path, {"lora.r": [2, 4]})
    assert main(["sweep", str(config), "--space", space, "--trials", "2", "--out", str(tmp_path / "taken")]) == 2
    assert "is a file" in one_error_line(capsys, "sweep")


def test_bad_counts_are_refused(config, capsys, tmp_path):
    space = space_file(tmp_path, {"lora.r": [2, 4]})
    assert "--workers 0" in refused(capsys, [str(config), "--space", space, "--trials", "2", "--workers", "0"],
                                    tmp_path)
    assert "--trials 0" in refused(capsys, [str(config), "--space", space, "--trials", "0"], tmp_path)
