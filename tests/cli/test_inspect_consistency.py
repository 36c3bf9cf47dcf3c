"""`lorakit inspect` refuses an adapter whose tensors disagree with its config, as the loader (merge) does, and
still shows every kind of adapter that loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.cli.main import main
from lorakit.hf.tiny import make_tiny_model
from lorakit.io.adapter_consistency import first_problem
from lorakit.io.checkpoint import read_adapter
from tests.helpers import TinyConvNet, tiny_bert_seq_cls, tiny_llama

PREFIX = "base_model.model.model.layers."


def as_peft_files(directory: Path, edit_tensors=None, edit_config=None) -> None:
    """Rewrite a saved adapter as plain PEFT files (no lorakit records or checksum), edited."""
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    config = {k: v for k, v in json.loads((directory / "adapter_config.json").read_text()).items()
              if not k.startswith("lorakit_")}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps(config))


def extra_layer(t):
    t[PREFIX + "0.mlp.down_proj.lora_A.weight"] = torch.randn(4, 64)
    t[PREFIX + "0.mlp.down_proj.lora_B.weight"] = torch.randn(32, 4)


CORRUPTIONS = {  # name -> (tensor edit, config edit, what inspect's line names)
    "extra tensors": (extra_layer, None, "layer model.layers.0.mlp.down_proj: not selected by target_modules"),
    "missing tensor": (lambda t: t.pop(PREFIX + "1.self_attn.v_proj.lora_B.weight"), None,
                       "layer model.layers.1.self_attn.v_proj: the file has lora_A but no lora_B"),
    "int64 weights": (lambda t: t.update({k: v.long() for k, v in t.items() if k.endswith("q_proj.lora_A.weight")}),
                      None, "has dtype torch.int64, expected floating point"),
    "r differs": (None, lambda c: c.update(r=8), "rank 4 in the file, but adapter_config.json gives this layer r=8"),
    "dora without magnitudes": (None, lambda c: c.update(use_dora=True), "no lora_magnitude_vector"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_inspect_refuses_what_the_loader_refuses(tmp_path, capsys, name):
    edit_tensors, edit_config, expected = CORRUPTIONS[name]
    base = make_tiny_model(tmp_path / "base", "llama")
    model = AutoModelForCausalLM.from_pretrained(base)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    lorakit.save_adapter(model, tmp_path / "adapter")
    as_peft_files(tmp_path / "adapter")
    assert main(["inspect", str(tmp_path / "adapter"), "--no-plot"]) == 0  # unedited, the PEFT form is fine
    as_peft_files(tmp_path / "adapter", edit_tensors, edit_config)
    capsys.readouterr()
    plot = tmp_path / "s.png"
    assert main(["inspect", str(tmp_path / "adapter"), "--plot", str(plot)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not plot.exists()
    assert captured.err.count("\n") == 1 and captured.err.startswith("lorakit inspect: error: ")
    assert expected in captured.err
    # the reference: the loader, given the model, refuses the same files
    assert main(["merge", str(base), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 2
    assert not (tmp_path / "merged").exists()


def _saved(model, cfg, tmp_path: Path, name: str) -> Path:
    lorakit.add_adapter(model, cfg)
    return lorakit.save_adapter(model, tmp_path / name)


VALID = {  # adapters the loader accepts: inspect must not flag them
    "dora + rank_pattern": lambda: (tiny_llama(), lorakit.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], use_dora=True, rank_pattern={"v_proj": 2},
        init_lora_weights=False)),
    "bias=all + lora_bias": lambda: (tiny_llama(), lorakit.LoraConfig(
        r=2, target_modules=["o_proj"], bias="all", lora_bias=True, init_lora_weights=False)),
    "regex targets + embedding": lambda: (tiny_llama(), lorakit.LoraConfig(
        r=2, target_modules=r".*(embed_tokens|layers\.1\.mlp\.up_proj)", init_lora_weights=False)),
    "all-linear": lambda: (tiny_llama(), lorakit.LoraConfig(r=2, target_modules="all-linear")),
    "classifier head": lambda: (tiny_bert_seq_cls(), lorakit.LoraConfig(
        r=2, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS")),
    "conv, grouped conv": lambda: (TinyConvNet(), lorakit.LoraConfig(
        r=4, target_modules=["conv", "grouped", "conv3d", "conv1d"], init_lora_weights=False)),
}


@pytest.mark.parametrize("name", list(VALID))
def test_every_loadable_kind_of_adapter_passes(tmp_path, name):
    model, cfg = VALID[name]()
    directory = _saved(model, cfg, tmp_path, "adapter")
    config, _, tensors, _ = read_adapter(directory)
    assert first_problem(config, tensors) is None
    assert main(["inspect", str(directory), "--no-plot"]) == 0


def test_adalora_passes(tmp_path):
    from lorakit.variants.adalora import AdaLoraConfig

    model = tiny_llama()
    cfg = AdaLoraConfig(init_r=4, target_r=2, target_modules=["q_proj"], total_step=10)
    directory = _saved(model, cfg, tmp_path, "adapter")
    assert main(["inspect", str(directory), "--no-plot"]) == 0


def test_singular_values_of_a_grouped_conv_update(tmp_path, capsys):
    import torch.nn.functional as F

    model = TinyConvNet()
    directory = _saved(model, lorakit.LoraConfig(r=4, target_modules=["grouped"], init_lora_weights=False),
                       tmp_path, "adapter")
    assert main(["inspect", str(directory), "--no-plot", "--json"]) == 0
    values = json.loads(capsys.readouterr().out)["layers"][0]["singular_values"]
    layer = model.grouped
    eye = torch.eye(8 * 9).reshape(72, 8, 3, 3)  # the update as a dense map: run it on every unit input
    dense = layer.scaling["default"] * layer.lora_B["default"](F.conv2d(eye, layer.lora_A["default"].weight))
    reference = torch.linalg.svdvals(dense.reshape(72, 8).T.double())[:4]
    torch.testing.assert_close(torch.tensor(values, dtype=torch.float64), reference)


def test_a_base_weight_in_the_file_without_modules_to_save_is_flagged(tmp_path, capsys):
    directory = _saved(tiny_llama(), lorakit.LoraConfig(r=2, target_modules=["q_proj"]), tmp_path, "adapter")
    as_peft_files(directory, lambda t: t.update({"base_model.model.lm_head.weight": torch.zeros(128, 32)}))
    capsys.readouterr()
    assert main(["inspect", str(directory), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "base_model.model.lm_head.weight is not a LoRA tensor" in err and err.count("\n") == 1
