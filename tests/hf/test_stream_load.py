"""QLoRA's base quantized while it loads, shard by shard (hf/stream_load.py), is the model the whole-model path
builds: the same packed weights and the same logits, bit for bit."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from lorakit.bnb import dequantize_weight
from lorakit.hf.config import ModelConfig
from lorakit.hf.models import load_model
from lorakit.hf.stream_load import load_quantized
from lorakit.quantize import QuantConfig, quantize_model, quantized_layers

pytest.importorskip("bitsandbytes")
IDS = torch.tensor([[5, 9, 17, 33, 2, 40, 11], [7, 7, 12, 90, 3, 1, 0]])


def sharded_llama(folder, hidden: int = 64, tied: bool = False, dtype=torch.bfloat16):
    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                      tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder, max_shard_size="40KB")  # several shards, as a Hub checkpoint
    return folder


def whole_then_quantized(folder, dtype, compute="bfloat16"):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return quantize_model(model, "nf4", compute, True)


@pytest.mark.parametrize(("hidden", "tied", "dtype"), [(64, False, torch.bfloat16), (64, True, torch.float32),
                                                       (96, False, torch.bfloat16)])
def test_streamed_equals_whole_model_then_quantized(tmp_path, hidden, tied, dtype):
    folder = sharded_llama(tmp_path / "m", hidden, tied, dtype)
    assert len(list(folder.glob("*.safetensors"))) > 1
    with pytest.warns(UserWarning, match="kept") if hidden == 96 else _no_warning():
        streamed, why = load_quantized(AutoModelForCausalLM, folder, QuantConfig("nf4", "bfloat16", True), dtype)
    assert why == "" and streamed is not None
    with pytest.warns(UserWarning, match="kept") if hidden == 96 else _no_warning():
        reference = whole_then_quantized(folder, dtype)
    ours, theirs = dict(quantized_layers(streamed)), dict(quantized_layers(reference))
    assert ours.keys() == theirs.keys() and ours  # the same layers packed (96 inputs: the MLP's down_proj kept)
    for path, layer in ours.items():
        assert torch.equal(layer.weight.data, theirs[path].weight.data), path
        assert torch.equal(dequantize_weight(layer), dequantize_weight(theirs[path])), path
    plain = {n: p for n, p in reference.named_parameters() if "weight" in n and p.dtype != torch.uint8}
    for name, param in streamed.named_parameters():
        if name in plain:
            assert torch.equal(param, plain[name]), name
    assert (streamed.lm_head.weight is streamed.model.embed_tokens.weight) == tied
    assert not streamed.training
    with torch.no_grad():
        assert torch.equal(streamed(IDS).logits, reference(IDS).logits)


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


def test_load_model_takes_the_streaming_path_for_a_safetensors_checkpoint(tmp_path, monkeypatch):
    folder = sharded_llama(tmp_path / "m")

    def whole_load(*args, **kwargs):
        raise AssertionError("the whole model was loaded")

    monkeypatch.setattr("lorakit.hf.models.from_pretrained", whole_load)
    cfg = ModelConfig(path=str(folder), dtype="bfloat16", quantization="nf4", compute_dtype="bfloat16",
                      gradient_checkpointing=True)
    model = load_model(cfg, folder)
    assert len(quantized_layers(model)) == 2 * 7


def test_a_checkpoint_without_the_task_head_is_loaded_whole(tmp_path):
    folder = sharded_llama(tmp_path / "m")
    model, why = load_quantized(transformers.AutoModelForSequenceClassification, folder, QuantConfig("nf4"),
                                torch.float32, num_labels=3)
    assert model is None and "score.weight" in why
    cfg = ModelConfig(path=str(folder), task="seq-cls", dtype="float32", quantization="nf4")
    loaded = load_model(cfg, folder, labels=["a", "b", "c"])  # the whole-model path, as before
    assert loaded.score.weight.shape == (3, 64) and quantized_layers(loaded)


def test_a_pytorch_bin_checkpoint_is_loaded_whole(tmp_path):
    folder = sharded_llama(tmp_path / "bin")
    state = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    for file in [*folder.glob("*.safetensors"), folder / "model.safetensors.index.json"]:
        file.unlink()
    torch.save(state, folder / "pytorch_model.bin")  # an older checkpoint
    model, why = load_quantized(AutoModelForCausalLM, folder, QuantConfig("nf4"), torch.float32)
    assert model is None and "safetensors" in why
