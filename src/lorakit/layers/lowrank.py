"""The LoRA math in one place: the scaling rule and the update s·B·A.

    W' = W + s · B @ A        A: (r, in), B: (out, r), s = lora_alpha / r   (rsLoRA: lora_alpha / sqrt(r))

Every layer's `delta_weight`, every fast path in lorakit/kernels and the config's per-module scaling go through
these two functions, so a change of the rule (or of how the product is rounded) is made once.
"""

from __future__ import annotations

import math

import torch


def lora_scaling(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """s for rank r: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA. Rank 0 (a variant's layer pruned to
    nothing; LoraConfig refuses r=0) adds nothing: 0."""
    if r == 0:
        return 0.0
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def scaled_product(
    a: torch.Tensor, b: torch.Tensor, scaling: float, base: torch.Tensor | None = None, in_place: bool = False
) -> torch.Tensor:
    """s · B @ A as (out, in); with `base`, base + s · B @ A in one fused product: a new tensor, or `base` itself
    with `in_place` (for a temporary the caller owns, e.g. a per-call merged weight summing several adapters).

    a: (r, in), b: (out, r), base: (out, in)."""
    if base is None:
        return (b @ a) * scaling
    if in_place:
        return base.addmm_(b, a, alpha=scaling)
    return torch.addmm(base, b, a, alpha=scaling)
