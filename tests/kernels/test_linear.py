"""Every fast path of LoraLinear.forward (kernels/linear.py, kernels/lora_autograd.py) against the reference
formula y = x W^T + b + sum_a s_a (x A_a^T) B_a^T, computed from the weights with ordinary autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorakit
from lorakit import kernels
from lorakit.kernels.linear import merge_on_the_fly
from lorakit.layers.base import AdapterSpec
from lorakit.layers.linear import LoraLinear
from tests.helpers import tiny_llama, token_ids
from tests.kernels.support import MANY, PATHS, check_training, make_layer, reference


def test_the_two_sizes_take_the_two_paths() -> None:
    assert not merge_on_the_fly(2 * 3, 12, 10)
    assert merge_on_the_fly(4 * 8, 12, 10)
    assert merge_on_the_fly(1024, 512, 512) and not merge_on_the_fly(8, 512, 512)  # prefill vs decode


# -- inference: in-place fused multiply-add into the base output -----------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 12), (6, 12), (12,), (32, 12)])
def test_inference_path_equals_formula(shape) -> None:
    layer = make_layer()
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(layer, x)[0])


@PATHS
def test_inference_path_with_two_adapters_of_different_ranks_and_lora_bias(lead) -> None:
    layer = make_layer(("a", 4), ("b", 2), lora_bias=True)
    for name in ("a", "b"):
        nn.init.normal_(layer.lora_B[name].bias)
    x = torch.randn(*lead, 12)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), reference(layer, x)[0])


@PATHS
def test_inference_path_on_bf16_base_rounds_once(lead) -> None:
    layer = make_layer(("a", 4), ("b", 2), dtype=torch.bfloat16)  # fp32 adapters: updates summed in fp32
    x = torch.randn(*lead, 12, dtype=torch.bfloat16)  # never merged: that would round the adapter into bf16
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, reference(layer, x)[0])


@PATHS
def test_inference_path_leaves_weights_and_input_untouched(lead) -> None:
    layer = make_layer(("a", 4), ("b", 3))
    x = torch.randn(*lead, 12)
    before = [t.clone() for t in (x, *layer.parameters())]
    with torch.no_grad():
        layer(x)
    for now, then in zip((x, *layer.parameters()), before, strict=True):
        assert torch.equal(now, then)


def test_inference_path_respects_base_hooks() -> None:
    layer = make_layer()
    x = torch.randn(5, 12)
    seen = []
    layer.base_layer.register_forward_hook(lambda module, inputs, out: seen.append(out))
    with torch.no_grad():
        y = layer(x)
    assert len(seen) == 1  # the hooked base ran as a module (plain path), and its output was not modified in place
    torch.testing.assert_close(seen[0], F.linear(x, layer.base_layer.weight, layer.base_layer.bias))
    torch.testing.assert_close(y, reference(layer, x)[0])


# -- training: one custom autograd node over a frozen nn.Linear -----------------------------------------------
@PATHS
def test_training_path_forward_and_gradients_equal_formula(lead) -> None:
    assert check_training(make_layer(), torch.randn(*lead, 12)) == "FrozenLinearLoraBackward"


@PATHS
def test_training_path_float64_and_without_bias(lead) -> None:
    layer = make_layer(bias=False).double()
    assert check_training(layer, torch.randn(*lead, 12, dtype=torch.float64)) == "FrozenLinearLoraBackward"


@PATHS
def test_training_path_when_only_the_adapter_needs_grad(lead) -> None:
    layer = make_layer()
    x = torch.randn(*lead, 12)  # no grad for x: the node skips the input gradient
    y = layer(x)
    want, leaves = reference(layer, x)
    y.sum().backward()
    want.sum().backward()
    assert type(y.grad_fn).__name__ == "FrozenLinearLoraBackward"
    torch.testing.assert_close(layer.lora_A["a"].weight.grad, leaves["A_a"].grad)
    torch.testing.assert_close(layer.lora_B["a"].weight.grad, leaves["B_a"].grad)


def test_training_a_trainable_base_falls_back_to_plain_autograd() -> None:
    layer = make_layer()
    layer.base_layer.weight.requires_grad_(True)
    x = torch.randn(3, 12, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ != "FrozenLinearLoraBackward"
    y.sum().backward()
    torch.testing.assert_close(layer.base_layer.weight.grad, torch.ones(3, 10).T @ x.detach())


def test_training_two_live_adapters_falls_back_and_is_exact() -> None:
    layer = make_layer(("a", 4), ("b", 3))
    assert check_training(layer, torch.randn(2, 3, 12)) != "FrozenLinearLoraBackward"


# -- the layer's other routes stay as they were ------------------------------------------------------------------
def test_mixed_rows_hook_still_replaces_the_adapter_loop() -> None:
    layer = make_layer()

    class Hook:
        def apply(self, lay, x, y):
            return y * 0 + 7.0

    layer.mixed_rows = Hook()
    torch.testing.assert_close(layer(torch.randn(2, 12)), torch.full((2, 10), 7.0))


def test_model_fast_paths_match_plain_paths() -> None:
    """A tiny Llama, all linear layers adapted: logits and every gradient equal with the fast paths switched off."""
    ids = token_ids()
    results = []
    for fast in (True, False):
        model = tiny_llama()
        torch.manual_seed(0)
        lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        model.train()
        with kernels.use(fast):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss_fast, grads_fast), (loss_plain, grads_plain) = results
    torch.testing.assert_close(loss_fast, loss_plain)
    assert grads_fast.keys() == grads_plain.keys() and len(grads_fast) == 2 * 7 * 2
    for key in grads_fast:
        torch.testing.assert_close(grads_fast[key], grads_plain[key], msg=lambda m, key=key: f"{key}: {m}")


def test_16_bit_adapters_over_a_16_bit_base_are_never_merged_per_call() -> None:
    """W + s B A rounded to bf16 loses the update here, the base output plus the update does not.
    W holds 256 in columns 0 and 1 and x = (1, -1, 0, ...): the base output is exactly 0; the update
    0.875 * (1 + 1) = 1.75 is exact in bf16, but 256 + 0.875 rounds to 256 and 256 - 0.875 to 255 (giving 1)."""
    layer = LoraLinear(nn.Linear(12, 10, bias=False).to(torch.bfloat16))
    layer.add_adapter("a", AdapterSpec(r=1, lora_alpha=1, init_lora_weights=False))
    layer.set_active(["a"])
    layer.cast_adapter_to_base_dtype("a")
    layer.base_layer.weight.requires_grad_(False)
    with torch.no_grad():
        layer.base_layer.weight.zero_()[:, :2] = 256
        layer.lora_A["a"].weight.zero_()[0, :2] = torch.tensor([1.0, -1.0])
        layer.lora_B["a"].weight.fill_(0.875)
    x = torch.zeros(*MANY, 12, dtype=torch.bfloat16)
    x[..., 0], x[..., 1] = 1, -1
    assert merge_on_the_fly(x.numel() // 12, 12, 10)  # a 32-bit layer would merge at this size
    with torch.no_grad():
        assert (layer(x) == 1.75).all()
    y = layer(x)  # the training path
    assert y.grad_fn is not None and (y == 1.75).all()
