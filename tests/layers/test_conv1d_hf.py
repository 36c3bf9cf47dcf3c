"""LoRA on transformers' Conv1D (GPT-2 style: weight stored (in, out), y = x @ W + b)."""

import torch
from transformers.pytorch_utils import Conv1D

import lorakit
from lorakit.layers.base import AdapterSpec
from lorakit.layers.linear import LoraLinear
from tests.helpers import logits, tiny_gpt2, token_ids


def make_layer(**spec) -> LoraLinear:
    base = Conv1D(nf=10, nx=12)  # 12 inputs -> 10 outputs, weight (12, 10)
    torch.nn.init.normal_(base.bias)
    layer = LoraLinear(base, fan_in_fan_out=True)
    layer.add_adapter("a", AdapterSpec(r=4, lora_alpha=8, init_lora_weights=False, **spec))
    layer.set_active(["a"])
    return layer


def test_shapes_follow_the_logical_in_out() -> None:
    layer = make_layer()
    assert (layer.in_features, layer.out_features) == (12, 10)
    assert layer.lora_A["a"].weight.shape == (4, 12)
    assert layer.lora_B["a"].weight.shape == (10, 4)


def test_forward_equals_dense_formula() -> None:
    layer = make_layer()
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    x = torch.randn(2, 5, 12)
    expected = x @ (layer.base_layer.weight + 2.0 * (b @ a).T) + layer.base_layer.bias
    torch.testing.assert_close(layer(x), expected)


def test_delta_weight_is_in_the_base_layout() -> None:
    layer = make_layer()
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    delta = layer.delta_weight("a")
    assert delta.shape == layer.base_layer.weight.shape == (12, 10)
    torch.testing.assert_close(delta, 2.0 * (b @ a).T)


def test_merge_and_unmerge_round_trip() -> None:
    layer = make_layer()
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(3, 12)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0)


def test_injection_into_gpt2_sets_fan_in_fan_out() -> None:
    model = tiny_gpt2()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, LoraLinear) and layer.fan_in_fan_out
    assert (layer.in_features, layer.out_features) == (32, 96)


def test_gpt2_merged_logits_equal_unmerged() -> None:
    model = tiny_gpt2()
    ids = token_ids()
    base = logits(model, ids)
    cfg = lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], init_lora_weights=False)
    lorakit.add_adapter(model, cfg)
    adapted = logits(model, ids)
    assert not torch.allclose(adapted, base)
    lorakit.merge_adapter(model)
    torch.testing.assert_close(logits(model, ids), adapted)
