"""Weighted combination of adapters: pure functions on (A, B) pairs, then `combine_adapters` for a model.

Every function takes pairs (A_i (r_i, in), B_i (out, r_i)) and coefficients c_i = weight_i * scaling_i and
returns one pair (A, B) whose scaling is 1:
  cat          A = [c_i A_i] stacked, B = [B_i] side by side     exact: B A = sum c_i B_i A_i (rank sum r_i)
  svd          best rank-k approximation of sum c_i B_i A_i (exact when k >= its rank)
  linear       A = sum sqrt|c_i| A_i, B = sum sign(c_i) sqrt|c_i| B_i (same ranks; exact for one adapter)
  ties         TIES-merging (trim, elect sign, disjoint mean) of the A's and of the B's (same ranks); each entry's
               sign is elected by total mass ("total") or by count ("frequency", a tie broken by mass)
  dare_linear  DARE (drop with p = 1 - density, rescale) then linear (same ranks)
  dare_ties    DARE then TIES (same ranks)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from lorakit.adapters import adapter_configs, add_adapter, get_config
from lorakit.errors import AdapterError, ConfigError
from lorakit.inject import lora_layers
from lorakit.variants.registry import config_flags

Pair = tuple[torch.Tensor, torch.Tensor]


# -- pure functions ------------------------------------------------------------------------------------------
def combine_cat(pairs: list[Pair], coeffs: list[float]) -> Pair:
    a = torch.cat([c * a for (a, _), c in zip(pairs, coeffs, strict=True)], dim=0)
    b = torch.cat([b for _, b in pairs], dim=1)
    return a, b


def combine_svd(pairs: list[Pair], coeffs: list[float], rank: int) -> Pair:
    delta = sum(c * (b.float() @ a.float()) for (a, b), c in zip(pairs, coeffs, strict=True))  # (out, in)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.shape[0])
    root = s[:k].sqrt()
    return root[:, None] * vh[:k], u[:, :k] * root[None, :]


def combine_linear(pairs: list[Pair], coeffs: list[float]) -> Pair:
    _same_rank(pairs)
    a = sum(math.sqrt(abs(c)) * a for (a, _), c in zip(pairs, coeffs, strict=True))
    b = sum(math.copysign(math.sqrt(abs(c)), c) * b for (_, b), c in zip(pairs, coeffs, strict=True))
    return a, b


def combine_ties(pairs: list[Pair], coeffs: list[float], density: float, majority_sign: str = "total") -> Pair:
    _same_rank(pairs)
    a_parts, b_parts = _split_weighted(pairs, coeffs)
    return (ties_merge([trim(t, density) for t in a_parts], majority_sign),
            ties_merge([trim(t, density) for t in b_parts], majority_sign))


def combine_dare_linear(pairs: list[Pair], coeffs: list[float], density: float, generator: torch.Generator) -> Pair:
    _same_rank(pairs)
    a_parts, b_parts = _split_weighted(pairs, coeffs)
    return sum(dare(t, density, generator) for t in a_parts), sum(dare(t, density, generator) for t in b_parts)


def combine_dare_ties(pairs: list[Pair], coeffs: list[float], density: float, generator: torch.Generator,
                      majority_sign: str = "total") -> Pair:
    _same_rank(pairs)
    a_parts, b_parts = _split_weighted(pairs, coeffs)
    return (ties_merge([dare(t, density, generator) for t in a_parts], majority_sign),
            ties_merge([dare(t, density, generator) for t in b_parts], majority_sign))


def trim(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest magnitude, zero the rest."""
    k = max(1, int(round(density * tensor.numel())))
    if k >= tensor.numel():
        return tensor
    threshold = tensor.abs().flatten().kthvalue(tensor.numel() - k + 1).values
    return tensor * (tensor.abs() >= threshold)


def dare(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop entries with probability 1 - density and rescale the survivors by 1 / density."""
    keep = torch.rand(tensor.shape, generator=generator, device="cpu").to(tensor.device) < density
    return tensor * keep / density


def ties_merge(tensors: list[torch.Tensor], majority_sign: str = "total") -> torch.Tensor:
    """Elect each entry's sign by total mass (or by count, "frequency"), then average the entries that agree."""
    stacked = torch.stack(tensors)
    sign = torch.sign(stacked.sum(dim=0))
    if majority_sign == "frequency":  # more positive than negative entries; as many of each: the mass decides
        count = torch.sign(stacked).sum(dim=0)
        sign = torch.where(count != 0, torch.sign(count), sign)
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(dim=0).clamp(min=1)
    return (stacked * agree).sum(dim=0) / count


def _split_weighted(pairs: list[Pair], coeffs: list[float]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    a_parts = [math.sqrt(abs(c)) * a for (a, _), c in zip(pairs, coeffs, strict=True)]
    b_parts = [math.copysign(math.sqrt(abs(c)), c) * b for (_, b), c in zip(pairs, coeffs, strict=True)]
    return a_parts, b_parts


def _same_rank(pairs: list[Pair]) -> None:
    ranks = sorted({a.shape[0] for a, _ in pairs})
    if len(ranks) > 1:
        raise ConfigError(f"this combination method needs adapters of one rank, got ranks {ranks}; use 'cat' or 'svd'")


# -- on a model ----------------------------------------------------------------------------------------------
METHODS: dict[str, Callable[..., Pair]] = {
    "linear": lambda pairs, coeffs, **_: combine_linear(pairs, coeffs),
    "cat": lambda pairs, coeffs, **_: combine_cat(pairs, coeffs),
    "svd": lambda pairs, coeffs, rank, **_: combine_svd(pairs, coeffs, rank),
    "ties": lambda pairs, coeffs, density, majority_sign, **_: combine_ties(pairs, coeffs, density, majority_sign),
    "dare_linear": lambda pairs, coeffs, density, generator, **_: combine_dare_linear(
        pairs, coeffs, density, generator
    ),
    "dare_ties": lambda pairs, coeffs, density, generator, majority_sign, **_: combine_dare_ties(
        pairs, coeffs, density, generator, majority_sign
    ),
}
MAJORITY_SIGNS = ("total", "frequency")  # ties / dare_ties: how each entry's sign is elected


def combine_adapters(
    model: nn.Module,
    adapter_names: list[str],
    weights: list[float],
    new_name: str,
    method: str = "linear",
    rank: int | None = None,
    density: float = 0.5,
    seed: int = 0,
    majority_sign: str = "total",
) -> nn.Module:
    """Add adapter `new_name` = the weighted combination of existing adapters (see the module docstring).

    `rank`: target rank for "svd" (default: the largest input rank). `density`: kept fraction for ties/dare.
    `majority_sign`: "total" or "frequency", how ties / dare_ties elect each entry's sign."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: expected one of {sorted(METHODS)}")
    if len(adapter_names) != len(weights) or not adapter_names:
        raise ConfigError(f"give one weight per adapter: {len(adapter_names)} adapters, {len(weights)} weights")
    if majority_sign not in MAJORITY_SIGNS:
        raise ConfigError(f"majority_sign={majority_sign!r}: expected one of {list(MAJORITY_SIGNS)}")
    if not 0 < density <= 1:
        raise ConfigError(f"density={density!r}: expected a fraction in (0, 1]")
    configs = [get_config(model, n) for n in adapter_names]
    if new_name in adapter_configs(model):
        raise AdapterError(f"an adapter named {new_name!r} already exists; choose another new_name")
    if any(c.lora_bias for c in configs):
        raise AdapterError("combine_adapters cannot combine adapters with lora_bias=True")
    if any(c.modules_to_save for c in configs):
        raise AdapterError("combine_adapters cannot combine adapters with modules_to_save (fully trained modules)")
    generator = torch.Generator().manual_seed(seed)
    results: dict[str, Pair] = {}
    for path, layer in lora_layers(model):
        present = [n for n in adapter_names if n in layer.r]
        if not present:
            continue
        if any(n in layer.lora_variant for n in present):
            raise AdapterError(f"layer {path}: combining adapters of a LoRA variant (a per-layer variant module) is "
                               "not supported; use plain LoRA ones")
        pairs, coeffs = [], []
        for name, weight in zip(adapter_names, weights, strict=True):
            if name in layer.r:
                pairs.append(_as_matrices(layer, name, path))
                coeffs.append(weight * layer.scaling[name])
        target_rank = rank or max(layer.r[n] for n in present)
        results[path] = METHODS[method](pairs, coeffs, rank=target_rank, density=density, generator=generator,
                                        majority_sign=majority_sign)
    ranks = {path: a.shape[0] for path, (a, _) in results.items()}
    top = max(ranks.values())
    config = replace(
        configs[0], r=top, lora_alpha=top, use_rslora=False, init_lora_weights=True,
        **{flag: False for flag in config_flags()},  # the variants' switches off: the result is plain LoRA
        target_modules=sorted(results), exclude_modules=None, layers_to_transform=None, layers_pattern=None,
        rank_pattern={_exact(p): k for p, k in ranks.items() if k != top},
        alpha_pattern={_exact(p): k for p, k in ranks.items() if k != top},
    )
    add_adapter(model, config, new_name, activate=False)
    with torch.no_grad():
        for path, (a, b) in results.items():
            layer = model.get_submodule(path)
            new_a, new_b = layer.lora_weights(new_name)
            new_a.copy_(a.reshape(new_a.shape))
            new_b.copy_(b.reshape(new_b.shape))
    return model


def _as_matrices(layer, name: str, path: str) -> Pair:
    a, b = layer.lora_weights(name)
    if b.dim() > 2 and b.shape[1] != a.shape[0]:
        raise AdapterError(f"layer {path}: adapters on grouped convolutions cannot be combined")
    return a.detach().reshape(a.shape[0], -1), b.detach().reshape(b.shape[0], -1)


def _exact(path: str) -> str:
    return re.escape(path)
