"""LoRA over a bitsandbytes 4-bit (NF4 / FP4) or 8-bit linear layer: QLoRA.

    y = base(x) + sum over live adapters a:  scale_a * B_a(A_a(dropout_a(x)))      (LoraLinear's forward)

The base stays packed and frozen; the adapter trains in fp32 and has the same tensors, keys and fingerprint as
over the full-precision layer, so adapter files move freely between the two bases. What differs from LoraLinear
is everything that touches W:
- reading: `base_weight` (= `dequantized_weight()`) is W as the base computes with it, (out, in) float32, a
  fresh tensor each call. So code written for a float base (DoRA's norms, merge checks) works unchanged.
- writing: merge, unmerge and PiSSA/OLoRA init run on a temporary dense copy of the base (`_dense_base`), then
  requantize it into the base layer with its own settings: lossy, as any requantization is
  (lorakit.merge_report measures by how much). Variants such as DoRA merge through the same path.

Two CPU bugs of bitsandbytes 0.50 are handled here (both found by comparing with a plain-torch reference):
1. On CPUs with AVX512-BF16, a Linear4bit run in eval mode without grad repacks its weight in place into a layout
   with bf16 block scales and computes in bf16, whatever the compute dtype; `dequantize_4bit` on that layout
   returns wrong values, and layers with in_features < blocksize or out_features % 32 != 0 crash.
   `prepare_layer` switches that path off, so a layer computes exactly `x @ dequantize(W).T`.
2. The native CPU dequantize kernel reads the wrong block scales when in_features is not a multiple of the
   blocksize (silently wrong weights, in the forward too). `cpu_4bit_kernel_is_wrong` probes for it once;
   quantize_model keeps such layers in full precision.
Importing this module registers the wrapper for bitsandbytes' Linear4bit / Linear8bitLt (inject.py imports it as
soon as bitsandbytes is loaded, and calls prepare_model).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.inject import register_layer_type
from lorakit.layers.base import weight_shape
from lorakit.layers.linear import LoraLinear
from lorakit.quantize import import_bitsandbytes, is_4bit, is_quantized, prepare_model

__all__ = ["LoraQuantLinear", "dequantize_linear", "dequantize_weight", "prepare_model", "requantize_weight"]


class LoraQuantLinear(LoraLinear):
    """LoraLinear whose base is a bitsandbytes Linear4bit or Linear8bitLt (or, after dequantize_model, nn.Linear)."""

    def __init__(self, base_layer: nn.Module) -> None:
        prepare_layer(base_layer)
        super().__init__(base_layer)
        self.out_features, self.in_features = weight_shape(base_layer)  # logical (out, in), not the packing

    @property
    def base_weight(self) -> torch.Tensor:
        """W (out, in): dequantized to float32 for a quantized base (read-only: writes go through _dense_base)."""
        return self.dequantized_weight() if is_quantized(self.base_layer) else self.base_layer.weight

    def dequantized_weight(self) -> torch.Tensor:
        """W (out, in) in float32, exactly as the base layer computes with it."""
        return dequantize_weight(self.base_layer)

    @contextmanager
    def _dense_base(self) -> Iterator[None]:
        """Inside: base_layer is an exact float32 nn.Linear copy (sharing the bias); after: W requantized back.

        On an error nothing is requantized unless the merge state already changed (then what was merged stays)."""
        quantized = self.base_layer
        if not is_quantized(quantized):
            yield
            return
        dense = dequantize_linear(quantized, torch.float32, share_bias=True)
        merged_before = list(self.merged_adapters)
        self.base_layer = dense
        ok = False
        try:
            yield
            ok = True
        finally:
            self.base_layer = quantized
            if ok or self.merged_adapters != merged_before:
                self.replace_base_weight(dense.weight.detach())

    def replace_base_weight(self, weight: torch.Tensor) -> None:
        """Store W (out, in) into the base layer, requantized with that layer's own settings."""
        requantize_weight(self.base_layer, weight)
        # base_weight is a fresh tensor per call, so caches keyed on its identity cannot see the change
        for variant in self.lora_variant.values():
            if callable(getattr(variant, "base_changed", None)):
                variant.base_changed(self)

    def merge(self, names: Iterable[str] | None = None, safe_merge: bool = False) -> None:
        names = list(names) if names is not None else list(self.active_adapters)
        if not any(n in self.r and n not in self.merged_adapters for n in names):
            super().merge(names, safe_merge)  # nothing to write: never requantize an unchanged W
            return
        with self._dense_base():  # one requantization for all adapters merged by this call
            super().merge(names, safe_merge)

    def unmerge(self, keep: int = 0) -> None:
        if len(self.merged_adapters) <= keep:
            super().unmerge(keep)
            return
        with self._dense_base():
            super().unmerge(keep)

    def _init_from_base(self, name: str, init: str, niter: int | None) -> None:
        """PiSSA / OLoRA: decompose the dequantized W; the residual is requantized into the base."""
        with self._dense_base():
            super()._init_from_base(name, init, niter)


# -- one quantized layer's weight ---------------------------------------------------------------------------------
def prepare_layer(layer: nn.Module) -> nn.Module:
    """Exact CPU compute path (bug 1 above) and a parameter count that sees the packed weights. Idempotent."""
    if is_4bit(layer):
        _unpack_cpu_layout(layer)
        layer.support_avx512bf16_for_cpu = False
        weight = layer.weight
        weight.lorakit_pack_factor = math.prod(weight.quant_state.shape) // max(weight.numel(), 1)
    return layer


def _unpack_cpu_layout(layer: nn.Module) -> None:
    """Undo bitsandbytes' CPU inference layout if a forward already applied it (lossy once, then exact)."""
    state = layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(layer.weight.data, state)
        layer.quant_state = layer.weight.quant_state


def dequantize_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a quantized layer computes with, (out, in) in float32 (a plain Linear: its weight)."""
    if not is_quantized(layer):
        return layer.weight.detach().float()
    bnb = import_bitsandbytes()
    if is_4bit(layer):
        _unpack_cpu_layout(layer)
        weight = layer.weight
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    # int8: rows of CB scaled by SCB/127, bitsandbytes' own arithmetic. Before the first forward CB/SCB sit on the
    # weight; the forward moves them to layer.state.
    cb = layer.weight.CB if layer.weight.CB is not None else layer.state.CB
    scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    if cb is None or scb is None:
        raise ConfigError("this Linear8bitLt holds no int8 weight (has_fp16_weights=True?); it cannot be dequantized")
    return cb.float() * scb.float().unsqueeze(1).mul(1.0 / 127.0)


def requantize_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    """Store `weight` (out, in) into a quantized layer with its own settings (a plain Linear: copied in)."""
    if not is_quantized(layer):
        with torch.no_grad():
            layer.weight.copy_(weight.to(layer.weight.dtype))
        return
    bnb = import_bitsandbytes()
    param = layer.weight
    if is_4bit(layer):
        _unpack_cpu_layout(layer)
        data, state = bnb.functional.quantize_4bit(
            weight.to(device=param.device, dtype=param.quant_state.dtype).contiguous(), blocksize=param.blocksize,
            compress_statistics=param.compress_statistics, quant_type=param.quant_type,
            quant_storage=param.quant_storage,
        )
        param.data, param.quant_state, layer.quant_state = data, state, state
        return
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(weight.to(device=param.device, dtype=torch.float16))
    param.data, param.CB, param.SCB = cb, cb, scb  # the next forward moves CB/SCB into layer.state


def dequantize_linear(layer: nn.Module, dtype: torch.dtype = torch.float32, share_bias: bool = False) -> nn.Linear:
    """A plain nn.Linear with the weight a quantized layer computes with (exact in float32).

    `share_bias`: the new layer uses the quantized layer's bias Parameter itself (a temporary dense view)."""
    weight = dequantize_weight(layer)
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=layer.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if layer.bias is not None:
        bias = layer.bias.detach().to(dtype)
        linear.bias = layer.bias if share_bias else nn.Parameter(bias, requires_grad=layer.bias.requires_grad)
    linear.train(layer.training)
    return linear


# -- bug 2: probe the CPU dequantize kernel once ------------------------------------------------------------------
def cpu_4bit_kernel_is_wrong(in_features: int, blocksize: int, device: torch.device) -> bool:
    """True where bitsandbytes' CPU kernel would dequantize this layer's 4-bit weight wrongly."""
    return device.type == "cpu" and in_features % blocksize != 0 and not _cpu_kernel_reads_partial_blocks()


@functools.cache
def _cpu_kernel_reads_partial_blocks() -> bool:
    """Rows of 96 values with blocks of 64: does the native dequantize agree with a plain-torch one?"""
    bnb = import_bitsandbytes()
    weight = torch.linspace(-1.0, 1.0, 2 * 96).reshape(2, 96)  # blocks with different absmax
    data, state = bnb.functional.quantize_4bit(weight, blocksize=64, compress_statistics=False, quant_type="nf4")
    return torch.equal(bnb.functional.dequantize_4bit(data, state), _plain_dequantize_4bit(data, state))


def _plain_dequantize_4bit(data: torch.Tensor, state) -> torch.Tensor:
    """code[nibble] * absmax[block] over the flattened weight (first value in the high nibble), no double quant."""
    count = math.prod(state.shape)
    packed = data.reshape(-1).view(torch.uint8)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:count].long()
    scales = state.absmax.float().repeat_interleave(state.blocksize)[:count]
    return (state.code[codes] * scales).reshape(state.shape).to(state.dtype)


def register() -> None:
    """Teach inject.py the bitsandbytes linear layers ('all-linear' selects them too)."""
    bnb = import_bitsandbytes()
    for kind in (bnb.nn.Linear4bit, bnb.nn.LinearNF4, bnb.nn.LinearFP4, bnb.nn.Linear8bitLt):
        register_layer_type(kind, LoraQuantLinear, linear=True)


register()
