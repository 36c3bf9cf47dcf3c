"""`lorakit train` on the command line: overrides anywhere, resolved config, one-line errors, --help examples."""

from __future__ import annotations

import pytest
import yaml

from lorakit.cli.main import main
from tests.corpora.fake_rotten_tomatoes import install_fake_rotten_tomatoes
from tests.train.runs import make_run


def test_print_config_applies_overrides_given_after_options(tmp_path, capsys):
    config = make_run(tmp_path, "causal")
    assert main(["train", str(config), "--print-config", "lora.r=16", "training.lr=3e-4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lora"]["r"] == 16 and printed["training"]["lr"] == 3e-4
    assert printed["model"]["path"] == str((tmp_path / "tiny-llama").resolve())


def test_without_a_config_the_demo_config_is_used(tmp_path, monkeypatch, capsys):
    install_fake_rotten_tomatoes(tmp_path, monkeypatch)  # the demo's data: Rotten Tomatoes, split by movie
    assert main(["train", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["pooling"] == "mean" and printed["training"]["method"] == "lora"
    assert printed["data"]["train_file"].endswith("rotten-tomatoes-splits-v1/train.jsonl")
    assert printed["data"]["test_file"].endswith("rotten-tomatoes-splits-v1/test.jsonl")


@pytest.mark.parametrize(("args", "message"), [
    (["training.lr=abc"], "training.lr='abc': expected float"),
    (["nosuch.yaml"], "config file nosuch.yaml does not exist"),
    (["a.yaml", "b.yaml"], "expected one config file"),
    (["model.path=/no/such/model", "data.train_file=x.jsonl"],
     "model.path='/no/such/model': expected a Hugging Face model directory"),
])
def test_user_errors_are_one_line_and_exit_code_2(capsys, args, message):
    assert main(["train", *args, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_train_runs_and_reports(tmp_path, capsys):
    config = make_run(tmp_path, "causal")
    assert main(["train", str(config), "training.max_steps=2"]) == 0
    out = capsys.readouterr().out
    for field in ("trainable params", "adapter size on disk", "time", "peak memory"):
        assert field in out
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_help_shows_worked_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "lorakit train configs/alpaca-tiny.yaml" in capsys.readouterr().out
