"""`lorakit merge` shard by shard (lorakit/merge_shards.py) writes what the whole-model merge writes, tensor for
tensor, for plain LoRA and for a QLoRA run; it refuses what it cannot do exactly and writes nothing then."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.cli.main import main
from lorakit.hf.tiny import make_tiny_model
from tests.cli.cli_helpers import one_error_line

IDS = torch.tensor([[5, 9, 17, 33, 2, 40]])


def sharded_base(folder):
    """A tiny Llama with a tokenizer, re-saved in bf16 as several shards (a Hub checkpoint's layout)."""
    make_tiny_model(folder, "llama", hidden_size=64)
    model = AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="60KB")
    assert len(list(folder.glob("*.safetensors"))) > 2
    return folder


def save_adapter(base, path, dora: bool = False, nan: bool = False):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=dora,
                                                  init_lora_weights=False, rank_pattern={"down_proj": 2}))
    if nan:
        with torch.no_grad():
            model.get_submodule("model.layers.1.mlp.up_proj").lora_B["default"].weight[0, 0] = float("inf")
    lorakit.save_adapter(model, path)
    return path


def tensors(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out |= load_file(file)
    return out


def assert_same_files(streamed, whole):
    ours, theirs = tensors(streamed), tensors(whole)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_shard_by_shard_writes_the_whole_model_merge(tmp_path, dtype, capsys):
    base = sharded_base(tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter")
    assert main(["merge", str(base), str(adapter), str(tmp_path / "whole"), "--dtype", dtype]) == 0
    assert main(["merge", str(base), str(adapter), str(tmp_path / "shards"), "--dtype", dtype, "--low-memory"]) == 0
    assert "shard by shard (14 layers merged" in capsys.readouterr().out
    assert_same_files(tmp_path / "shards", tmp_path / "whole")
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.safetensors")) == \
        sorted(p.name for p in base.glob("*.safetensors"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "shards")  # plain transformers, with its tokenizer
    assert merged.dtype == getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lorakit.load_adapter(model, adapter)
    with torch.no_grad():
        torch.testing.assert_close(merged.float()(IDS).logits, model(IDS).logits, atol=0.05, rtol=0.05)


def test_a_qlora_run_merges_into_the_dequantized_base_shard_by_shard(tmp_path):
    pytest.importorskip("bitsandbytes")
    base = sharded_base(tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter")
    run = {"model": {"task": "causal-lm", "quantization": "nf4", "compute_dtype": "float32", "double_quant": True}}
    (adapter / "train_config.yaml").write_text(yaml.safe_dump(run))
    assert main(["merge", str(base), str(adapter), str(tmp_path / "whole")]) == 0
    assert main(["merge", str(base), str(adapter), str(tmp_path / "shards"), "--low-memory"]) == 0
    assert_same_files(tmp_path / "shards", tmp_path / "whole")
    plain = tmp_path / "plain"
    (adapter / "train_config.yaml").unlink()
    assert main(["merge", str(base), str(adapter), str(plain), "--low-memory"]) == 0
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tensors(plain)[name], tensors(tmp_path / "shards")[name])  # the packed base differs


def test_the_merge_streams_by_itself_when_the_model_would_not_fit(tmp_path, capsys, monkeypatch):
    base = sharded_base(tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter")
    monkeypatch.setattr("lorakit.cli.merge._available_memory", lambda: 1000)
    assert main(["merge", str(base), str(adapter), str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    assert "are available: merging shard by shard" in capsys.readouterr().out


def test_what_cannot_stream_exactly_is_refused_and_nothing_is_written(tmp_path, capsys):
    base = sharded_base(tmp_path / "base")
    dora = save_adapter(base, tmp_path / "dora", dora=True)
    assert main(["merge", str(base), str(dora), str(tmp_path / "out"), "--low-memory"]) == 2
    assert "not plain LoRA" in one_error_line(capsys)
    bad = save_adapter(base, tmp_path / "bad", nan=True)
    assert main(["merge", str(base), str(bad), str(tmp_path / "out"), "--low-memory"]) != 0
    assert "NaN/Inf" in capsys.readouterr().err
    other = tmp_path / "other"
    make_tiny_model(other, "llama", hidden_size=32)
    foreign = save_adapter(other, tmp_path / "foreign")
    assert main(["merge", str(base), str(foreign), str(tmp_path / "out"), "--low-memory"]) != 0
    assert "trained on another model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left behind
