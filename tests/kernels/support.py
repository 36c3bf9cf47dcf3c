"""Shared by the kernel tests: small LoraLinear layers and the reference formula
y = x W^T + b + sum_a s_a (drop(x) A_a^T) B_a^T, computed from the weights with ordinary autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.kernels.sparse_dropout import dropped_positions
from lorakit.layers.base import AdapterSpec
from lorakit.layers.linear import LoraLinear

# Leading shapes for the 12 -> 10 layers below: FEW tokens take the factored products, MANY the per-call
# merged weight W + s B A (kernels/linear.merge_on_the_fly); every path is tested on both.
FEW, MANY = (2, 3), (4, 8)
PATHS = pytest.mark.parametrize("lead", [FEW, MANY], ids=["factored", "merged"])


def make_layer(*specs: tuple[str, int], dtype=torch.float32, bias: bool = True, dropout: float = 0.0,
               lora_bias: bool = False) -> LoraLinear:
    layer = LoraLinear(nn.Linear(12, 10, bias=bias).to(dtype))
    for name, r in specs or (("a", 4),):
        layer.add_adapter(name, AdapterSpec(r=r, lora_alpha=2 * r + 1, lora_dropout=dropout, init_lora_weights=False,
                                            lora_bias=lora_bias))
    layer.set_active([name for name, _ in specs or (("a", 4),)])
    for p in layer.base_layer.parameters():
        p.requires_grad_(False)
    return layer


def reference(layer: LoraLinear, x: torch.Tensor, mask: torch.Tensor | None = None):
    """The plain formula on detached copies: (output, leaf tensors {x, A_name, B_name, ...})."""
    leaves = {"x": x.detach().clone().requires_grad_(True)}
    base = F.linear(leaves["x"], layer.base_layer.weight, layer.base_layer.bias)
    y = base
    for name in layer.active_adapters:  # over a 16-bit base: the fp32 updates summed, then rounded once
        a = leaves[f"A_{name}"] = layer.lora_A[name].weight.detach().clone().requires_grad_(True)
        b = leaves[f"B_{name}"] = layer.lora_B[name].weight.detach().clone().requires_grad_(True)
        xd = leaves["x"].to(a.dtype) * (mask if mask is not None else 1.0)
        update = F.linear(F.linear(xd, a), b, layer.lora_B[name].bias) * layer.scaling[name]
        y = y.to(update.dtype) + update
    return y.to(base.dtype), leaves


def grads(layer: LoraLinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"x": x.grad}
    for name in layer.active_adapters:
        out[f"A_{name}"], out[f"B_{name}"] = layer.lora_A[name].weight.grad, layer.lora_B[name].weight.grad
    return out


def check_training(layer: LoraLinear, x: torch.Tensor, mask: torch.Tensor | None = None, seed: int = 3) -> str:
    """Forward and every gradient equal the plain formula; returns the name of the autograd node used."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    y = layer(x)
    want, leaves = reference(layer, x, mask)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(y)
    y.backward(g)
    want.backward(g)
    got = grads(layer, x)
    for key, leaf in leaves.items():
        torch.testing.assert_close(got[key], leaf.grad, msg=lambda m, key=key: f"grad of {key}: {m}")
    return type(y.grad_fn).__name__


def dropout_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The draw the layer makes right after torch.manual_seed(seed), as nn.Dropout's dense multiplier."""
    torch.manual_seed(seed)
    mask = torch.full((x.numel(),), 1.0 / (1.0 - p), dtype=x.dtype)
    mask[dropped_positions(x.numel(), p)] = 0.0
    return mask.view(x.shape)
