"""LoraLinear's fast paths: the same formula, fewer multiply-adds and fewer passes over memory.

    y = base(x) + sum over live adapters a:  scale_a * B_a(A_a(dropout_a(x)))      (layers/linear.py: the reference)

Two ways to compute the adapter term of a frozen nn.Linear, chosen per call by `merge_on_the_fly`:
- factored: h = x A^T (tokens, r), then y.addmm_(h, B^T, alpha=s) into the fresh base output, in place:
  tokens * r * (in + out) multiply-adds and no (tokens, out) temporary;
- merged for this call: y = x (W + s B A)^T, with W + s B A a temporary: out * in * r multiply-adds, fewer
  when many tokens go through a narrow layer (prefill, training batches). W itself is never modified. Only
  over a 32/64-bit base: rounded to 16 bits, W + s B A would not give the unmerged layer's outputs.
Training over a frozen nn.Linear with one live adapter runs as one custom autograd node (lora_autograd.py).
Dropout up to SPARSE_MAX_P runs on the dropped entries only (sparse_dropout.py); its forward stays factored.
Anything else (a variant's adapter, a quantized, transposed or hooked base, a mixed-adapter batch, extra
forward arguments, autocast, several adapters in training, lora_bias in training) returns None and the
reference formula runs. tests/kernels checks every path here against it, gradients included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.kernels.lora_autograd import FrozenLinearLora
from lorakit.kernels.sparse_dropout import SPARSE_DTYPES, SPARSE_MAX_P, Dropped
from lorakit.layers.base import LOW_PRECISION
from lorakit.layers.lowrank import scaled_product

if TYPE_CHECKING:
    from lorakit.layers.linear import LoraLinear


def merge_on_the_fly(tokens: int, in_features: int, out_features: int) -> bool:
    """Whether this call should build W + s B A instead of running the two low-rank products.

    Products: tokens * r * (in + out) multiply-adds; merged weight: out * in * r plus writing and reading one
    (out, in) temporary. Measured on CPU BLAS the merged weight wins from about tokens * (in + out) = 2 in out
    (hidden 512: from ~512 tokens; hidden 4096: from ~4096 tokens)."""
    return tokens * (in_features + out_features) >= 2 * in_features * out_features


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


def fast_forward(layer: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor | None:
    """The layer's output by a fast path, or None when none applies (the caller then runs the reference)."""
    names = layer._live
    if not names or args or kwargs or layer.disable_adapters or layer.mixed_rows is not None:
        return None
    base = layer.base_layer
    if type(base) is not nn.Linear or layer.fan_in_fan_out or base._forward_hooks or base._forward_pre_hooks:
        return None
    variants = layer.lora_variant
    if any(name in variants for name in names):
        return None
    if torch.is_grad_enabled() and _needs_graph(layer, x, names):
        return _train_forward(layer, x, names)
    return _inference_forward(layer, x, names)


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
    # never over a 16-bit base (see _can_merge): W + s B A rounded to 16 bits is another model
    merged = x.dtype not in LOW_PRECISION and merge_on_the_fly(x.numel() // x.shape[-1], layer.in_features,
                                                                layer.out_features)
    return FrozenLinearLora.apply(x, weight, bias, lora_a.weight, lora_b.weight, layer.scaling[name], p, merged)


def _inference_forward(layer: LoraLinear, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    weight, bias = layer.base_layer.weight, layer.base_layer.bias
    x2 = x.reshape(-1, x.shape[-1])  # (tokens, in)
    if _can_merge(layer, names, x2) and merge_on_the_fly(x2.shape[0], layer.in_features, layer.out_features):
        return F.linear(x, *_merged_weights(layer, names, weight, bias))
    cast: dict[torch.dtype, torch.Tensor] = {x2.dtype: x2}  # x in each adapter dtype, converted once
    hs = []
    for name in names:  # the projections first, while x is still in cache
        lora_a = layer.lora_A[name].weight
        if lora_a.dtype not in cast:
            cast[lora_a.dtype] = x2.to(lora_a.dtype)
        hs.append(_project(layer.lora_dropout[name], cast[lora_a.dtype], lora_a))  # (tokens, r)
    y = F.linear(x, weight, bias).contiguous()  # a fresh tensor nothing else holds: safe to add into in place
    y2 = y.view(-1, y.shape[-1])  # (tokens, out)
    wide = None  # adapter updates in their (wider) dtype, summed, for a 16-bit base
    for name, h in zip(names, hs, strict=True):
        lora_b, scale = layer.lora_B[name], layer.scaling[name]
        if lora_b.weight.dtype == y2.dtype:
            y2.addmm_(h, lora_b.weight.t(), alpha=scale)
            if lora_b.bias is not None:
                y2.add_(lora_b.bias, alpha=scale)
            continue
        update = torch.mm(h.mul_(scale), lora_b.weight.t())  # h is this call's own tensor
        if lora_b.bias is not None:
            update.add_(lora_b.bias, alpha=scale)
        wide = update if wide is None else wide.add_(update)
    if wide is not None:  # y + updates in fp32, rounded once into the base's dtype (as PEFT does)
        y2.copy_(wide.add_(y2))
    return y


def _can_merge(layer: LoraLinear, names: tuple[str, ...], x2: torch.Tensor) -> bool:
    """A 32/64-bit base with every adapter in its dtype, and no dropout drawing now (it applies to the adapter's
    input only). Never a 16-bit base, even with 16-bit adapters: W + s B A rounded to 16 bits is not the model
    the unmerged layer computes (base output plus update, rounded once), and differs from PEFT's outputs."""
    dtype = layer.base_layer.weight.dtype
    return x2.dtype == dtype and dtype not in LOW_PRECISION and all(
        layer.lora_A[n].weight.dtype == dtype == layer.lora_B[n].weight.dtype
        and dropout_rate(layer.lora_dropout[n]) == 0.0
        for n in names
    )


def _merged_weights(
    layer: LoraLinear, names: tuple[str, ...], weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W + sum s B A and b + sum s b_B, as temporaries for this call."""
    merged = None
    for name in names:
        lora_a, lora_b, scale = layer.lora_A[name], layer.lora_B[name], layer.scaling[name]
        if merged is None:
            merged = scaled_product(lora_a.weight, lora_b.weight, scale, base=weight)  # (out, in), W untouched
        else:
            scaled_product(lora_a.weight, lora_b.weight, scale, base=merged, in_place=True)
        if lora_b.bias is not None:
            bias = lora_b.bias * scale if bias is None else torch.add(bias, lora_b.bias, alpha=scale)
    return merged, bias


def _project(dropout: nn.Module, x2: torch.Tensor, lora_a: torch.Tensor) -> torch.Tensor:
    """dropout(x) @ A^T."""
    p = dropout_rate(dropout)
    if p == 0.0:
        return torch.mm(x2, lora_a.t())
    if p is not None and x2.dtype in SPARSE_DTYPES:
        return Dropped(x2, p).project(x2, lora_a)
    return torch.mm(dropout(x2), lora_a.t())
