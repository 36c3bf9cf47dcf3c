"""Fold an adapter and a second pair of factors into one plain LoRA of twice the rank (no new math in any loader).

When the trained model is W0 + s·(c·B·A + k·B_k·A_k) for the ORIGINAL base W0 (Delta-LoRA: c = 1 + λ, k = -λ and
(A_k, B_k) the factors at its anchor step; PiSSA / OLoRA: c = 1, k = -1 and (A_k, B_k) the initial factors),

    s·(c·B·A + k·B_k·A_k) = s'·B'·A'   with   A' = [A; A_k]  (rank stacked: dim 0 of A),
                                              B' = (s/s')·[c·B, k·B_k]  (dim 1 of B, for every layer type)

and s' the scaling the doubled config gives the layer. `doubled_config` scales lora_alpha with the rank so that
s' = s (x2, or x√2 under rank-stabilised scaling alpha/√r); the factor s/s' then only corrects rounding. A lora_B
bias enters as s·bias, so it is saved as (s/s')·bias.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import AdapterFileError
from lorakit.io.keys import to_file_key
from lorakit.layers.base import LoraLayer


def doubled_config(config: LoraConfig) -> LoraConfig:
    """`config` at twice the rank (rank_pattern too), as plain LoRA, with every layer's scaling kept."""
    grow = math.sqrt(2) if config.use_rslora else 2
    return dataclasses.replace(
        config, r=2 * config.r, lora_alpha=config.lora_alpha * grow, init_lora_weights=True,
        rank_pattern={k: 2 * v for k, v in (config.rank_pattern or {}).items()},
        alpha_pattern={k: v * grow for k, v in (config.alpha_pattern or {}).items()},
    )


def fold_pairs(model: nn.Module, name: str, export: LoraConfig, anchors: dict[str, tuple[LoraLayer, torch.Tensor,
               torch.Tensor]], trained: float, anchor: float, tensors: dict[str, torch.Tensor]) -> None:
    """Replace, in `tensors` (file keys -> tensors, as adapter_state_dict gives them), the A, B (and lora_B bias)
    of every layer in `anchors` ({path: (layer, A_k, B_k)}) by the rank-2r fold of the module doc."""
    keys = {id(t): k for k, t in model.state_dict(keep_vars=True).items()}

    def file_key(tensor: torch.Tensor, path: str) -> str:
        key = to_file_key(keys.get(id(tensor), ""), name)
        if key not in tensors:
            raise AdapterFileError(f"cannot fold adapter {name!r}: layer {path} has a tensor with no file key")
        return key

    for path, (layer, a_k, b_k) in anchors.items():
        a, b = layer.lora_weights(name)
        coef = layer.scaling[name] / export.scaling_for(path)
        with torch.no_grad():
            a_new = torch.cat([a, a_k.to(a).reshape(a.shape)], dim=0)  # (2r, in, *kernel)
            b_new = torch.cat([trained * b, anchor * b_k.to(b).reshape(b.shape)], dim=1)  # (out, 2r, *1)
            if coef != 1.0:
                b_new = b_new * coef
        tensors[file_key(a, path)] = a_new.detach().to("cpu").contiguous()
        tensors[file_key(b, path)] = b_new.detach().to("cpu").contiguous()
        lora_b = getattr(layer, "lora_B", None)
        bias = getattr(lora_b[name], "bias", None) if lora_b is not None and name in lora_b else None
        if bias is not None and coef != 1.0:
            tensors[file_key(bias, path)] = (bias.detach() * coef).to("cpu").contiguous()
