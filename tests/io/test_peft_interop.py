"""PEFT interop, both directions: the same adapter gives the same outputs in PEFT 0.21 and in lorakit.

Each case builds a tiny random model and a config with random A and B (init_lora_weights=False) and every other
trainable tensor (biases, heads, magnitudes) moved off its initial value, so a file that loses anything fails.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from tests.helpers import TinyConvNet, conv_input, tiny_bert_seq_cls, tiny_gpt2, tiny_llama, token_ids
from tests.io.support import forward, peft_model, perturb_trainable

LLAMA_QV = ["q_proj", "v_proj"]
# name -> (model builder, input builder, config)
CASES: dict[str, tuple[Callable, Callable, dict[str, Any]]] = {
    "llama": (tiny_llama, token_ids, dict(target_modules=LLAMA_QV)),
    "llama_patterns": (tiny_llama, token_ids, dict(
        target_modules=[*LLAMA_QV, "down_proj"], rank_pattern={"v_proj": 2, r"layers\.1\.self_attn\.q_proj": 6},
        alpha_pattern={"down_proj": 3.0, "v_proj": 7.0})),
    "llama_regex": (tiny_llama, token_ids, dict(target_modules=r".*\.layers\.1\.mlp\.(gate|up)_proj")),
    "llama_all_linear": (tiny_llama, token_ids, dict(target_modules="all-linear")),
    "llama_layer_subset": (tiny_llama, token_ids, dict(target_modules=LLAMA_QV, layers_to_transform=[1],
                                                       layers_pattern="layers")),
    "llama_rslora": (tiny_llama, token_ids, dict(target_modules=LLAMA_QV, use_rslora=True, lora_alpha=5)),
    "llama_lora_bias": (tiny_llama, token_ids, dict(target_modules=LLAMA_QV, lora_bias=True)),
    "llama_embedding": (tiny_llama, token_ids, dict(target_modules=["embed_tokens", "q_proj"])),
    "llama_dora": (tiny_llama, token_ids, dict(target_modules=[*LLAMA_QV, "embed_tokens"], use_dora=True)),
    "gpt2_conv1d": (tiny_gpt2, token_ids, dict(target_modules=["c_attn", "c_fc", "c_proj"], fan_in_fan_out=True)),
    "gpt2_bias_all": (tiny_gpt2, token_ids, dict(target_modules=["c_attn"], fan_in_fan_out=True, bias="all")),
    "bert_head": (tiny_bert_seq_cls, token_ids, dict(target_modules=["query", "value"],
                                                     modules_to_save=["classifier"])),
    "bert_seq_cls": (tiny_bert_seq_cls, token_ids, dict(target_modules=["query", "value"], task_type="SEQ_CLS")),
    "bert_bias_all": (tiny_bert_seq_cls, token_ids, dict(target_modules=["query", "value"], bias="all")),
    "bert_bias_all_head": (tiny_bert_seq_cls, token_ids, dict(
        target_modules=["query"], bias="all", modules_to_save=["classifier"])),
    "bert_bias_lora_only": (tiny_bert_seq_cls, token_ids, dict(target_modules=["query", "value"], bias="lora_only")),
    "convnet": (TinyConvNet, conv_input, dict(target_modules=["conv", "grouped", "conv3d", "conv1d", "head"])),
    "convnet_dora": (TinyConvNet, conv_input, dict(target_modules=["conv", "conv3d", "conv1d", "head"], use_dora=True)),
}
# what PEFT writes beyond the adapter: a targeted embedding's whole base table (save_embedding_layers="auto"), and
# with bias="all" a second copy of the head's bias under a key without the adapter name
EMBEDDING_TABLE = "base_model.model.model.embed_tokens.base_layer.weight"
PEFT_EXTRA_KEYS = {"llama_embedding": {EMBEDDING_TABLE}, "llama_dora": {EMBEDDING_TABLE},
                   "bert_bias_all_head": {"base_model.model.classifier.modules_to_save.bias"}}


def _case(name: str):
    build, make_input, settings = CASES[name]
    return build(), make_input(), {"r": 4, "lora_alpha": 8, **settings}


def _lorakit_model(base: torch.nn.Module, settings: dict[str, Any], adapter_name: str = "default"):
    model = copy.deepcopy(base)
    lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=False, **settings), adapter_name)
    perturb_trainable(model)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_file_loads_in_lorakit(peft, tmp_path, case: str) -> None:
    base, x, settings = _case(case)
    reference = peft_model(base, **settings)
    reference.save_pretrained(tmp_path)
    model = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    expected = forward(reference, x)
    torch.testing.assert_close(forward(model, x), expected)
    assert not torch.allclose(forward(base, x), expected, atol=1e-3)  # the adapter does something


@pytest.mark.parametrize("case", sorted(CASES))
def test_lorakit_file_loads_in_peft(peft, tmp_path, case: str) -> None:
    base, x, settings = _case(case)
    model = _lorakit_model(base, settings)
    lorakit.save_adapter(model, tmp_path)
    reference = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    expected = forward(model, x)
    torch.testing.assert_close(forward(reference, x), expected)
    assert not torch.allclose(forward(base, x), expected, atol=1e-3)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_tensor_names_and_shapes_as_peft(peft, tmp_path, case: str) -> None:
    base, _, settings = _case(case)
    peft_model(base, **settings).save_pretrained(tmp_path / "peft")
    lorakit.save_adapter(_lorakit_model(base, settings), tmp_path / "lorakit")
    theirs = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    ours = load_file(tmp_path / "lorakit" / "adapter_model.safetensors")
    extra = PEFT_EXTRA_KEYS.get(case, set())
    assert set(ours) == set(theirs) - extra
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(theirs[k].shape) for k in ours}
    assert {v.dtype for v in ours.values()} == {torch.float32}


def test_seq_cls_task_trains_and_saves_the_head_like_peft(peft, tmp_path) -> None:
    """task_type="SEQ_CLS": PEFT adds classifier/score to modules_to_save and expects the head in the file."""
    config = lorakit.LoraConfig(target_modules=["query"], task_type="SEQ_CLS")
    reference = peft.LoraConfig(target_modules=["query"], task_type="SEQ_CLS")
    peft.get_peft_model(tiny_bert_seq_cls(), reference)  # PEFT edits the config it is given
    assert config.modules_to_save == reference.modules_to_save == ["classifier", "score"]
    model = lorakit.add_adapter(tiny_bert_seq_cls(), config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trainable == {"classifier.modules_to_save.default.weight", "classifier.modules_to_save.default.bias"}
    lorakit.save_adapter(model, tmp_path)
    assert "base_model.model.classifier.weight" in load_file(tmp_path / "adapter_model.safetensors")
