"""An adapter file may change the base model only where its config says so (bias="all" / "lora_only" biases,
modules_to_save). A base weight in the file otherwise (e.g. `lm_head.weight` with no modules_to_save) used to be
copied over the base silently; now the load is refused and the model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit import AdapterFileError
from lorakit.io.keys import PREFIX
from tests.helpers import tiny_llama

WEIGHTS = "adapter_model.safetensors"


def _saved(tmp_path, **settings):
    base = tiny_llama(attention_bias=True)
    model = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(r=4, target_modules=["q_proj"], **settings))
    return base, lorakit.save_adapter(model, tmp_path / "adapter")


def _add_tensor(directory, key: str, tensor: torch.Tensor) -> None:
    path = directory / WEIGHTS
    tensors = load_file(path)
    tensors[key] = tensor
    save_file(tensors, path, metadata={"format": "pt"})  # as another tool would write it: no lorakit records


def test_a_base_weight_without_modules_to_save_is_refused(tmp_path):
    base, directory = _saved(tmp_path)
    _add_tensor(directory, PREFIX + "lm_head.weight", torch.zeros_like(base.lm_head.weight))
    model = copy.deepcopy(base)
    with pytest.raises(AdapterFileError, match=r"lm_head\.weight.*base model"):
        lorakit.load_adapter(model, directory)
    torch.testing.assert_close(model.lm_head.weight, base.lm_head.weight)
    assert not any(".lora_" in key for key in model.state_dict())


def test_a_base_bias_is_refused_when_the_config_trains_no_bias(tmp_path):
    base, directory = _saved(tmp_path)
    _add_tensor(directory, PREFIX + "model.layers.0.self_attn.q_proj.base_layer.bias", torch.ones(32))
    with pytest.raises(AdapterFileError, match=r"q_proj\.base_layer\.bias.*bias='none'"):
        lorakit.load_adapter(copy.deepcopy(base), directory)


def test_base_biases_load_when_the_config_trains_them(tmp_path):
    base = tiny_llama(attention_bias=True)
    model = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(r=4, target_modules=["q_proj"], bias="all"))
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.base_layer.bias.add_(1.0)
    directory = lorakit.save_adapter(model, tmp_path / "adapter")
    loaded = lorakit.load_adapter(copy.deepcopy(base), directory)
    torch.testing.assert_close(loaded.model.layers[0].self_attn.q_proj.base_layer.bias,
                               model.model.layers[0].self_attn.q_proj.base_layer.bias)


def test_the_embedding_weight_peft_saves_beside_an_embedding_adapter_loads(tmp_path):
    """PEFT writes `embed_tokens.base_layer.weight` (save_embedding_layers) when the embedding is targeted: a resized
    vocabulary travels that way, and PEFT loads it; so does lorakit, giving the same model."""
    base = tiny_llama()
    model = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(r=4, target_modules=["embed_tokens"]))
    directory = lorakit.save_adapter(model, tmp_path / "adapter")
    changed = base.model.embed_tokens.weight.detach() * 2
    _add_tensor(directory, PREFIX + "model.embed_tokens.base_layer.weight", changed)
    loaded = lorakit.load_adapter(copy.deepcopy(base), directory)
    torch.testing.assert_close(loaded.model.embed_tokens.base_layer.weight, changed)
