"""The kernels' switch: off, every LoraLinear runs its reference formula; on, the fast paths give the same outputs
and gradients, for each kernel's conditions (factored products, per-call merged weights, the one-node autograd,
16-bit bases, several adapters)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lorakit import kernels
from lorakit.kernels.linear import merge_on_the_fly
from lorakit.layers.linear import LoraLinear
from tests.kernels.support import FEW, MANY, PATHS, make_layer, reference

ONE_NODE = "FrozenLinearLoraBackward"


def run(layer: LoraLinear, x: torch.Tensor, on: bool, train: bool) -> tuple[torch.Tensor, dict, str]:
    """(output, gradients of x and the adapters, autograd node) with the kernels switched on or off."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(train)
    with kernels.use(on), torch.set_grad_enabled(train):
        y = layer(x)
    if not train:
        return y, {}, ""
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape))
    grads = {"x": x.grad}
    for name in layer.active_adapters:
        grads[f"A_{name}"], grads[f"B_{name}"] = layer.lora_A[name].weight.grad, layer.lora_B[name].weight.grad
    return y.detach(), grads, type(y.grad_fn).__name__


def check_on_equals_off(layer: LoraLinear, x: torch.Tensor, train: bool, formula: bool = True) -> str:
    """The same outputs (and gradients) with the switch on and off, and (with `formula`) the same as the formula
    computed here; returns the node the kernels used."""
    y_on, g_on, node_on = run(layer, x, on=True, train=train)
    y_off, g_off, node_off = run(layer, x, on=False, train=train)
    assert node_off != ONE_NODE  # off: plain autograd over the reference formula
    torch.testing.assert_close(y_on, y_off)
    if formula:
        torch.testing.assert_close(y_off, reference(layer, x)[0])
    assert g_on.keys() == g_off.keys()
    for key in g_on:
        torch.testing.assert_close(g_on[key], g_off[key], msg=lambda m, key=key: f"grad of {key}: {m}")
    return node_on


def test_switch_is_on_by_default_and_use_restores_it() -> None:
    assert kernels.enabled()
    with pytest.raises(RuntimeError), kernels.use(False):
        assert not kernels.enabled()
        raise RuntimeError("the block fails")
    assert kernels.enabled()


def test_switch_off_runs_the_reference_formula() -> None:
    layer = make_layer()
    x = torch.randn(*FEW, 12, requires_grad=True)
    with kernels.use(False):
        y = layer(x)
    assert type(y.grad_fn).__name__ != ONE_NODE
    with kernels.use(True):
        assert type(layer(x).grad_fn).__name__ == ONE_NODE


@PATHS
def test_inference_on_equals_off(lead) -> None:
    assert merge_on_the_fly(MANY[0] * MANY[1], 12, 10) and not merge_on_the_fly(FEW[0] * FEW[1], 12, 10)
    check_on_equals_off(make_layer(), torch.randn(*lead, 12), train=False)


@PATHS
def test_inference_two_adapters_with_lora_bias_on_equals_off(lead) -> None:
    layer = make_layer(("a", 4), ("b", 2), lora_bias=True)
    for name in ("a", "b"):
        torch.nn.init.normal_(layer.lora_B[name].bias)
    check_on_equals_off(layer, torch.randn(*lead, 12), train=False)


@PATHS
def test_inference_bf16_base_on_equals_off(lead) -> None:
    """One fp32 adapter over a bf16 base: both add the update in fp32 and round once. (With several adapters the
    reference rounds after each one and the kernels once, as PEFT does: test_linear.py checks the kernels then.)"""
    check_on_equals_off(make_layer(("a", 4), dtype=torch.bfloat16), torch.randn(*lead, 12, dtype=torch.bfloat16),
                        train=False)


@PATHS
def test_inference_bf16_adapters_on_a_bf16_base_on_equals_off(lead) -> None:
    layer = make_layer(("a", 4), dtype=torch.bfloat16)
    layer.cast_adapter_to_base_dtype("a")  # add_adapter's autocast_adapter_dtype=False
    # not against support.reference: it rounds each bf16 product, the layer adds s * h @ B^T and rounds once
    check_on_equals_off(layer, torch.randn(*lead, 12, dtype=torch.bfloat16), train=False, formula=False)


@PATHS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_one_node_on_equals_off(lead, dtype) -> None:
    layer = make_layer(dtype=dtype).to(dtype)
    assert check_on_equals_off(layer, torch.randn(*lead, 12, dtype=dtype), train=True) == ONE_NODE


@PATHS
def test_training_where_the_kernels_decline_on_equals_off(lead) -> None:
    """Two live adapters in training: the kernels hand over to the reference formula."""
    layer = make_layer(("a", 4), ("b", 3))
    assert check_on_equals_off(layer, torch.randn(*lead, 12), train=True) != ONE_NODE


def test_switch_off_dropout_is_nn_dropouts_own_draw() -> None:
    """With the switch off, dropout is the module's dense mask (on, kernels/sparse_dropout.py draws positions:
    tests/kernels/test_sparse_dropout.py checks that path against the formula with its own mask)."""
    layer = make_layer(dropout=0.05).train()
    x = torch.randn(4, 12, requires_grad=True)
    torch.manual_seed(0)
    with kernels.use(False):
        y = layer(x)
    torch.manual_seed(0)
    mask = F.dropout(torch.ones(4, 12), 0.05, training=True)
    assert type(y.grad_fn).__name__ != ONE_NODE
    torch.testing.assert_close(y, reference(layer, x, mask)[0])


def test_environment_variable_turns_the_kernels_off() -> None:
    code = (
        "import torch; from torch import nn; from lorakit import kernels; "
        "from lorakit.layers.base import AdapterSpec; from lorakit.layers.linear import LoraLinear; "
        "layer = LoraLinear(nn.Linear(4, 3).requires_grad_(False)); "
        "layer.add_adapter('a', AdapterSpec(r=2, lora_alpha=2)); layer.set_active(['a']); "
        "print(kernels.enabled(), type(layer(torch.randn(2, 4)).grad_fn).__name__)"
    )
    env = {**os.environ, "LORAKIT_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    enabled, node = out.split()
    assert enabled == "False" and node != ONE_NODE
