"""`lorakit train` refuses what would train silently wrong, and checks a multi-process run's config once, in the
launcher, before any worker starts."""

from __future__ import annotations

import warnings

import pytest
from torch import nn

import lorakit.train.distributed
from lorakit import LoraConfig, add_adapter
from lorakit.cli.main import main
from tests.train.runs import make_run


@pytest.fixture
def launches(monkeypatch) -> list[list[str]]:
    """The torchrun commands `lorakit train --nproc N` would run (none is run)."""
    calls: list[list[str]] = []
    monkeypatch.setattr(lorakit.train.distributed.subprocess, "call", lambda command, env: calls.append(command) or 0)
    return calls


@pytest.mark.parametrize("nproc", ["0", "-2"])
def test_nproc_below_one_is_refused(tmp_path, capsys, launches, nproc):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    capsys.readouterr()
    assert main(["train", str(config), "--nproc", nproc]) == 2
    err = capsys.readouterr().err
    assert f"--nproc {nproc}: expected a positive number" in err and err.count("\n") == 1
    assert launches == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("lora.target_modules=[nosuch]", "matched no layer"),
    ("training.grad_accum=8", "fewer than one global batch of 64"),  # 32 examples: enough for 1 process, not 2
    ("data.train_file=/no/such.jsonl", "/no/such.jsonl"),
])
def test_a_bad_config_with_nproc_is_one_line_before_any_worker(tmp_path, capsys, launches, override, message):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    capsys.readouterr()
    assert main(["train", str(config), override, "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert launches == [] and not (tmp_path / "out").exists()


def test_a_good_config_with_nproc_is_launched_and_the_check_writes_nothing(tmp_path, capsys, launches):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    assert main(["train", str(config), "lora.r=2", "--nproc", "2", "--resume"]) == 0
    assert len(launches) == 1 and "--nproc_per_node=2" in launches[0]
    assert launches[0][-3:] == [str(config), "lora.r=2", "--resume"]
    assert not (tmp_path / "out").exists()


def test_a_rank_larger_than_a_layer_is_refused_by_train(tmp_path, capsys):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})  # tiny llama: 32-wide q_proj / v_proj
    capsys.readouterr()
    assert main(["train", str(config), "lora.r=1000"]) == 2
    err = capsys.readouterr().err
    assert "rank r=1000 is larger than layer 'model.layers.0.self_attn.q_proj' can use: 32 inputs" in err
    assert "Set lora.r <= " in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_rank_larger_than_a_layer_warns_in_the_library():
    model = nn.Sequential(nn.Linear(8, 16), nn.Conv2d(3, 16, 3))
    with pytest.warns(UserWarning, match=r"rank r=10 is larger than layer '0' can use: 8 inputs, 16 outputs"):
        add_adapter(model, LoraConfig(r=10, target_modules=["0"]))
    with pytest.warns(UserWarning, match=r"layer '1' can use: 27 inputs, 16 outputs"):  # 3 channels x 3 x 3
        add_adapter(model, LoraConfig(r=17, target_modules=["1"]), "conv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        add_adapter(model, LoraConfig(r=8, target_modules=["0"]), "fits")  # r = min(8, 16): fine
