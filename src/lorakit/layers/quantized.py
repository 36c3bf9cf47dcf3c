"""LoRA over a bitsandbytes 4-bit (NF4 / FP4) or 8-bit linear layer: QLoRA.

    y = base(x) + sum over live adapters a:  scale_a * B_a(A_a(dropout_a(x)))      (LoraLinear's forward)

The base stays packed and frozen; the adapter trains in fp32 and has the same tensors, keys and fingerprint as
over the full-precision layer, so adapter files move freely between the two bases. What differs from LoraLinear
is everything that touches W:
- reading: `base_weight` (= `dequantized_weight()`) is W as the base computes with it, (out, in) float32, a
  fresh tensor each call. So code written for a float base (a variant's weight norms, merge checks) works unchanged.
- writing: merge, unmerge and inits from the base weight run on a temporary dense copy of the base (`_dense_base`), then
  requantize it into the base layer with its own settings: lossy, as any requantization is
  (lorakit.merge_report measures by how much). Variant modules merge through the same path.

Reading and writing one packed weight, and two CPU bugs of bitsandbytes 0.50, are in lorakit/bnb.py.
Importing this module registers the wrapper for bitsandbytes' Linear4bit / Linear8bitLt (inject.py imports it as
soon as bitsandbytes is loaded, and calls prepare_model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lorakit.bnb import (
    cpu_4bit_kernel_is_wrong,
    dequantize_linear,
    dequantize_weight,
    import_bitsandbytes,
    is_quantized,
    prepare_layer,
    prepare_model,
    requantize_weight,
)
from lorakit.inject import register_layer_type
from lorakit.layers.base import weight_shape
from lorakit.layers.linear import LoraLinear

# prepare_model: inject.prepare_optional_types calls it on this module; the others are re-exported for callers
__all__ = [
    "LoraQuantLinear", "cpu_4bit_kernel_is_wrong", "dequantize_linear", "dequantize_weight", "prepare_model",
    "requantize_weight",
]


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

    def _init_from_base(self, name: str, init: str, decompose: Callable[..., tuple]) -> None:
        """An init from the base weight: decompose the dequantized W; the residual is requantized into the base."""
        with self._dense_base():
            super()._init_from_base(name, init, decompose)


def register() -> None:
    """Teach inject.py the bitsandbytes linear layers ('all-linear' selects them too)."""
    bnb = import_bitsandbytes()
    for kind in (bnb.nn.Linear4bit, bnb.nn.LinearNF4, bnb.nn.LinearFP4, bnb.nn.Linear8bitLt):
        register_layer_type(kind, LoraQuantLinear, linear=True)


register()
