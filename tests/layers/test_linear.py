"""LoraLinear against the dense formula y = x @ (W + s * B @ A).T + b, computed from the weights."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.layers.base import AdapterSpec
from lorakit.layers.linear import LoraLinear


def make_layer(r: int = 4, alpha: float = 8, bias: bool = True, **spec) -> LoraLinear:
    layer = LoraLinear(nn.Linear(12, 10, bias=bias))
    layer.add_adapter("a", AdapterSpec(r=r, lora_alpha=alpha, init_lora_weights=False, **spec))
    layer.set_active(["a"])
    return layer


def dense(layer: LoraLinear, x: torch.Tensor, scaling: float, names=("a",)) -> torch.Tensor:
    weight = layer.base_layer.weight.detach().clone()
    for name in names:
        weight += scaling * layer.lora_B[name].weight @ layer.lora_A[name].weight
    return F.linear(x, weight, layer.base_layer.bias)


def test_forward_equals_dense_formula() -> None:
    layer = make_layer()
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(layer(x), dense(layer, x, 8 / 4))


def test_forward_on_2d_input_and_without_bias() -> None:
    layer = make_layer(bias=False)
    x = torch.randn(6, 12)
    torch.testing.assert_close(layer(x), dense(layer, x, 8 / 4))


def test_delta_weight_is_scaled_b_times_a() -> None:
    layer = make_layer(r=3, alpha=6)
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    torch.testing.assert_close(layer.delta_weight("a"), 2.0 * b @ a)


def test_rslora_scaling_is_alpha_over_sqrt_r() -> None:
    layer = make_layer(r=4, alpha=8, use_rslora=True)
    assert layer.scaling["a"] == pytest.approx(8 / math.sqrt(4))
    x = torch.randn(2, 12)
    torch.testing.assert_close(layer(x), dense(layer, x, 8 / math.sqrt(4)))


def test_dropout_in_eval_mode_is_identity() -> None:
    layer = make_layer(lora_dropout=0.5).eval()
    x = torch.randn(4, 12)
    torch.testing.assert_close(layer(x), dense(layer, x, 2.0))


def test_dropout_in_train_mode_changes_the_update_only() -> None:
    layer = make_layer(lora_dropout=0.5).train()
    x = torch.randn(64, 12)
    out = layer(x)
    assert not torch.allclose(out, dense(layer, x, 2.0))
    # dropout acts on the adapter's input: with the adapter disabled the base output is untouched
    layer.disable_adapters = True
    torch.testing.assert_close(layer(x), F.linear(x, layer.base_layer.weight, layer.base_layer.bias))


def test_lora_bias_adds_scaled_bias() -> None:
    layer = make_layer(lora_bias=True)
    with torch.no_grad():
        layer.lora_B["a"].bias.normal_()
    x = torch.randn(3, 12)
    expected = dense(layer, x, 2.0) + 2.0 * layer.lora_B["a"].bias
    torch.testing.assert_close(layer(x), expected)


def test_lora_bias_starts_at_zero() -> None:
    layer = make_layer(lora_bias=True)
    assert torch.count_nonzero(layer.lora_B["a"].bias) == 0


def test_two_adapters_add() -> None:
    layer = make_layer()
    layer.add_adapter("b", AdapterSpec(r=2, lora_alpha=2, init_lora_weights=False))
    layer.set_active(["a", "b"])
    x = torch.randn(3, 12)
    expected = dense(layer, x, 2.0) + 1.0 * F.linear(x, layer.lora_B["b"].weight @ layer.lora_A["b"].weight)
    torch.testing.assert_close(layer(x), expected)


def test_merge_gives_same_output_and_unmerge_restores_weight() -> None:
    layer = make_layer(lora_bias=True)
    with torch.no_grad():
        layer.lora_B["a"].bias.normal_()
    w0, b0 = layer.base_layer.weight.detach().clone(), layer.base_layer.bias.detach().clone()
    x = torch.randn(3, 12)
    before = layer(x)
    layer.merge()
    assert layer.merged_adapters == ["a"]
    torch.testing.assert_close(layer.base_layer.weight, w0 + layer.delta_weight("a"))
    torch.testing.assert_close(layer(x), before)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0)
    torch.testing.assert_close(layer.base_layer.bias, b0)
    torch.testing.assert_close(layer(x), before)


def test_disabled_gives_base_output() -> None:
    layer = make_layer()
    layer.disable_adapters = True
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x), F.linear(x, layer.base_layer.weight, layer.base_layer.bias))


def test_gradients_match_dense_formula() -> None:
    layer = make_layer()
    x = torch.randn(4, 12)
    layer(x).square().sum().backward()
    got = (layer.lora_A["a"].weight.grad.clone(), layer.lora_B["a"].weight.grad.clone())
    a = layer.lora_A["a"].weight.detach().clone().requires_grad_()
    b = layer.lora_B["a"].weight.detach().clone().requires_grad_()
    w = layer.base_layer.weight.detach()
    F.linear(x, w + 2.0 * b @ a, layer.base_layer.bias.detach()).square().sum().backward()
    torch.testing.assert_close(got[0], a.grad)
    torch.testing.assert_close(got[1], b.grad)


def test_bf16_base_keeps_fp32_adapter_and_bf16_output() -> None:
    layer = LoraLinear(nn.Linear(12, 10).to(torch.bfloat16))
    layer.add_adapter("a", AdapterSpec(r=4, lora_alpha=8, init_lora_weights=False))
    layer.set_active(["a"])
    assert layer.lora_A["a"].weight.dtype == torch.float32
    x = torch.randn(3, 12, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    delta = 2.0 * F.linear(x.float(), layer.lora_B["a"].weight @ layer.lora_A["a"].weight)
    torch.testing.assert_close(out, layer.base_layer(x) + delta.to(torch.bfloat16))
