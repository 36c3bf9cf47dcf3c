"""`lorakit combine`: the written adapter is the weighted combination, in lorakit and in PEFT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.cli.main import main
from lorakit.hf.tiny import make_tiny_model
from lorakit.inject import lora_layers
from tests.cli.cli_helpers import IDS, one_error_line


def save_adapter_for(base: Path, path: Path, targets: list[str], r: int, alpha: int, seed: int) -> None:
    model = AutoModelForCausalLM.from_pretrained(base)  # records base as its base_model_name_or_path
    torch.manual_seed(seed)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                  init_lora_weights=False))
    lorakit.save_adapter(model, path)


def two_adapters(tmp_path: Path, r_b: int = 2) -> tuple[Path, Path, Path]:
    base = make_tiny_model(tmp_path / "base", "llama")
    save_adapter_for(base, tmp_path / "a", ["q_proj", "v_proj"], 4, 8, seed=1)
    save_adapter_for(base, tmp_path / "b", ["q_proj", "o_proj"], r_b, 3, seed=2)
    return base, tmp_path / "a", tmp_path / "b"


def loaded(base: Path, **adapters: Path):
    model = AutoModelForCausalLM.from_pretrained(base)
    for name, path in adapters.items():
        lorakit.load_adapter(model, path, adapter_name=name)
    return model


@pytest.mark.slow  # a fresh interpreter imports torch and transformers (~10-20 s on a loaded 2-core machine)
def test_cat_as_a_subprocess_is_the_weighted_sum_in_lorakit_and_peft(tmp_path):
    from peft import PeftModel

    base, a, b = two_adapters(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lorakit", "combine", str(a), str(b), "--out", str(tmp_path / "c"),
                           "--weights", "0.7", "-0.3", "--method", "cat"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    inputs = loaded(base, a=a, b=b)  # the dense formula: ΔW = 0.7 ΔW_a - 0.3 ΔW_b, layer by layer
    combined = loaded(base, default=tmp_path / "c")
    expected = {p: sum(w * layer.delta_weight(n) for n, w in (("a", 0.7), ("b", -0.3)) if n in layer.r)
                for p, layer in lora_layers(inputs)}
    got = {p: layer.delta_weight("default") for p, layer in lora_layers(combined)}
    assert sorted(got) == sorted(expected)
    for path, delta in expected.items():
        torch.testing.assert_close(got[path], delta)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "c")).eval()
    with torch.no_grad():
        ours = combined(IDS).logits
        torch.testing.assert_close(peft(IDS).logits, ours)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(base)(IDS).logits, ours, atol=1e-3)


@pytest.mark.parametrize(("options", "library"), [
    (["--method", "svd", "--svd-rank", "2"], dict(method="svd", rank=2)),
    (["--method", "ties", "--density", "0.3", "--majority-sign", "frequency"],
     dict(method="ties", density=0.3, majority_sign="frequency")),
    (["--method", "dare_ties", "--seed", "3"], dict(method="dare_ties", seed=3)),
    ([], dict(method="linear")),
])
def test_options_reach_the_library(tmp_path, options, library):
    base, a, b = two_adapters(tmp_path, r_b=4)  # one rank: every method applies
    assert main(["combine", str(a), str(b), "-o", str(tmp_path / "c"), "--weights", "1.5", "0.5", *options]) == 0
    reference = loaded(base, a=a, b=b)
    lorakit.combine_adapters(reference, ["a", "b"], [1.5, 0.5], "ref", **library)
    combined = loaded(base, default=tmp_path / "c")
    expected = {p: layer.delta_weight("ref") for p, layer in lora_layers(reference) if "ref" in layer.r}
    got = {p: layer.delta_weight("default") for p, layer in lora_layers(combined)}
    assert sorted(got) == sorted(expected)
    for path, delta in expected.items():
        torch.testing.assert_close(got[path], delta)


@pytest.mark.parametrize(("extra", "message"), [
    (["--weights", "1"], "one weight per adapter (2 adapters, 1 weights)"),
    (["--method", "linear"], "needs adapters of one rank, got ranks [2, 4]"),
    (["--method", "cat", "--density", "0.5"], "--density applies to"),
])
def test_bad_combinations_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    _, a, b = two_adapters(tmp_path)
    capsys.readouterr()
    assert main(["combine", str(a), str(b), "--out", str(tmp_path / "c"), *extra]) == 2
    assert message in one_error_line(capsys, "combine")
    assert not (tmp_path / "c").exists()


def test_adapters_of_different_bases_are_refused(tmp_path, capsys):
    _, a, _ = two_adapters(tmp_path)
    other = make_tiny_model(tmp_path / "other", "llama", seed=5)
    save_adapter_for(other, tmp_path / "x", ["q_proj", "v_proj"], 4, 8, seed=3)
    capsys.readouterr()
    assert main(["combine", str(a), str(tmp_path / "x"), "--out", str(tmp_path / "c")]) == 2
    err = one_error_line(capsys, "combine")
    assert "different base models" in err and str(tmp_path / "other") in err
    assert not (tmp_path / "c").exists()
