"""Fast paths of LoraLinear.forward: the same formula, fewer passes over memory.

    y = base(x) + sum over live adapters a:  scale_a * B_a(A_a(dropout_a(x)))

- Inference (no autograd graph): the base output is a fresh tensor, so each adapter adds into it in place
  with one fused multiply-add (`y.addmm_(h, B^T, alpha=scale)`); no (tokens, out) temporaries.
- Training over a frozen nn.Linear with one live adapter: one custom autograd node (lora_autograd.py).
- Dropout up to SPARSE_MAX_P runs on the dropped entries only (sparse_dropout.py), in both.
Anything else (a variant such as DoRA, a quantized or hooked base, autocast, several adapters in training,
lora_bias in training) returns None and the plain path in linear.py runs. tests/layers/test_fast_paths.py
checks every path here against the plain formula, gradients included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.layers.lora_autograd import FrozenLinearLora
from lorakit.layers.sparse_dropout import SPARSE_DTYPES, SPARSE_MAX_P, Dropped

if TYPE_CHECKING:
    from lorakit.layers.linear import LoraLinear


def dropout_rate(module: nn.Module) -> float | None:
    """0.0 if the adapter's dropout does nothing now, p if the sparse path serves it, None otherwise."""
    kind = type(module)
    if kind is nn.Identity:
        return 0.0
    if kind is nn.Dropout:
        if not module.training or module.p == 0:
            return 0.0
        return module.p if module.p <= SPARSE_MAX_P else None
    return None


def fast_forward(layer: LoraLinear, x: torch.Tensor) -> torch.Tensor | None:
    """The layer's output by a fast path, or None when none applies (the caller then runs the plain one)."""
    base = layer.base_layer
    if type(base) is not nn.Linear or layer.fan_in_fan_out or base._forward_hooks or base._forward_pre_hooks:
        return None
    names = layer._live
    variants = layer.lora_variant
    if any(name in variants for name in names):
        return None
    weight, bias = base.weight, base.bias
    if torch.is_grad_enabled() and _needs_graph(layer, x, names):
        return _train_forward(layer, x, names)
    return _inference_forward(layer, x, names, weight, bias)


def _needs_graph(layer: LoraLinear, x: torch.Tensor, names: tuple[str, ...]) -> bool:
    if x.requires_grad:
        return True
    base = layer.base_layer
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return True
    return any(p.requires_grad for n in names for p in (*layer.lora_A[n].parameters(), *layer.lora_B[n].parameters()))


def _train_forward(layer: LoraLinear, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor | None:
    base = layer.base_layer
    weight, bias = base.weight, base.bias
    if len(names) != 1 or weight.requires_grad or (bias is not None and bias.requires_grad):
        return None
    if torch.is_autocast_enabled(x.device.type):
        return None
    name = names[0]
    lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
    if lora_b.bias is not None or not (x.dtype == weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype):
        return None
    p = dropout_rate(layer.lora_dropout[name])
    if p is None or (p > 0 and x.dtype not in SPARSE_DTYPES):
        return None
    return FrozenLinearLora.apply(x, weight, bias, lora_a.weight, lora_b.weight, layer.scaling[name], p)


def _inference_forward(
    layer: LoraLinear, x: torch.Tensor, names: tuple[str, ...], weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])  # (tokens, in)
    cast: dict[torch.dtype, torch.Tensor] = {x2.dtype: x2}  # x in each adapter dtype, converted once
    hs = []
    for name in names:  # the projections first, while x is still in cache
        lora_a = layer.lora_A[name].weight
        if lora_a.dtype not in cast:
            cast[lora_a.dtype] = x2.to(lora_a.dtype)
        hs.append(_project(layer.lora_dropout[name], cast[lora_a.dtype], lora_a))  # (tokens, r)
    y = F.linear(x, weight, bias).contiguous()  # a fresh tensor nothing else holds: safe to add into in place
    y2 = y.view(-1, y.shape[-1])  # (tokens, out)
    for name, h in zip(names, hs, strict=True):
        lora_b, scale = layer.lora_B[name], layer.scaling[name]
        if lora_b.weight.dtype == y2.dtype:
            y2.addmm_(h, lora_b.weight.t(), alpha=scale)
            if lora_b.bias is not None:
                y2.add_(lora_b.bias, alpha=scale)
        else:  # 16-bit base, fp32 adapter: add in fp32, round once into the base's dtype
            y2.add_(F.linear(h, lora_b.weight, lora_b.bias), alpha=scale)
    return y


def _project(dropout: nn.Module, x2: torch.Tensor, lora_a: torch.Tensor) -> torch.Tensor:
    """dropout(x) @ A^T."""
    p = dropout_rate(dropout)
    if p == 0.0:
        return torch.mm(x2, lora_a.t())
    if p is not None and x2.dtype in SPARSE_DTYPES:
        return Dropped(x2, p).project(x2, lora_a)
    return torch.mm(dropout(x2), lora_a.t())
