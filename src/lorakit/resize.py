"""Change an adapter's rank after training: pure functions on each layer's (A, B, scaling), then `resize_file` for
a whole adapter file.

The update of a layer is ΔW = s B A (B (out, r), A (r, in); conv kernels flattened into `in`). Its best rank-k
approximation in the Frobenius (and spectral) norm is the truncated SVD U_k S_k V_k^T (Eckart–Young), with error
sqrt(sum of the dropped sigma_i^2). The SVD comes from the factors in O((in + out) r^2), never from the dense
(out, in) matrix: B = Qb Rb, A^T = Qa Ra, so B A = Qb (Rb Ra^T) Qa^T and the SVD of the small r x r core
M = Rb Ra^T = U S V^T gives B A = (Qb U) S (Qa V)^T (the same identity as spectrum.update_singular_values).

Written back as plain LoRA factors with the scale folded in and scaling 1:
    B' = sign(s) Qb U_k sqrt(|s| S_k),   A' = sqrt(|s| S_k) V_k^T Qa^T,   lora_alpha = r' (use_rslora off)
so s' B' A' = s (B A)_k exactly, whatever the old alpha, r or rslora were. A layer whose rank is already <= k
keeps its factors (B' = s B, A' = A): truncation changes nothing there.

Energy: the share of ||ΔW||_F^2 = sum sigma_i^2 kept by the top k singular values; `energy_rank` is the smallest k
keeping at least the asked share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import torch

from lorakit.errors import ConfigError
from lorakit.io.adapter_file import AdapterFile
from lorakit.io.keys import strip_prefix
from lorakit.variants.registry import config_flags

A_ROLES = ("lora_A.weight", "lora_embedding_A")  # (r, in, *kernel) / (r, num_embeddings)
B_ROLES = ("lora_B.weight", "lora_embedding_B")  # (out, r, *1) / (dim, r)
ENERGY_SLACK = 1e-12  # rounding in the cumulative sum must not push k up by one when the share is met exactly


def check_energy(energy: float) -> float:
    if not 0.0 < energy <= 1.0:
        raise ConfigError(f"energy={energy!r}: expected a share in (0, 1], e.g. 0.9 keeps 90% of the update's energy")
    return energy


def energy_rank(singular_values: torch.Tensor | list[float], energy: float) -> int:
    """The smallest k whose top-k singular values keep `energy` of sum sigma^2 (at least 1; a zero update: 1)."""
    check_energy(energy)
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    squares = s * s
    total = float(squares.sum())
    if s.numel() == 0 or total == 0.0:
        return 1
    kept = torch.cumsum(squares, 0) / total  # (r,)
    return int((kept < energy - ENERGY_SLACK).sum()) + 1


def kept_share(singular_values: list[float], k: int) -> float:
    """The share of sum sigma^2 that the top k keep (1.0 for a zero update)."""
    squares = [v * v for v in singular_values]
    total = sum(squares)
    return sum(squares[:k]) / total if total > 0 else 1.0


def factored_svd(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U (out, r), S (r,), Vh (r, in)) with B @ A = U diag(S) Vh, in float64, from the (r, in) and (out, r)
    factors without forming B @ A."""
    q_b, r_b = torch.linalg.qr(b.double())  # (out, r), (r, r)
    q_a, r_a = torch.linalg.qr(a.double().T)  # (in, r), (r, r)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)  # the r x r core
    return q_b @ u, s, vh @ q_a.T


def truncate(a: torch.Tensor, b: torch.Tensor, scaling: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') of rank min(k, r) with B' @ A' the best rank-k approximation of scaling * B @ A (scaling 1).
    A is (r, in) and B (out, r), 2-D; results are float64."""
    if k >= a.shape[0]:  # nothing to drop: keep the factors, fold the scale into B
        return a.double(), b.double() * scaling
    u, s, vh = factored_svd(a, b)
    root = (s[:k] * abs(scaling)).sqrt()  # (k,)
    sign = -1.0 if scaling < 0 else 1.0
    return root[:, None] * vh[:k], sign * u[:, :k] * root[None, :]


@dataclass
class RankSuggestion:
    """Per layer, the smallest rank keeping `energy` of its update's energy; `overall`: one rank for all layers,
    the largest of those (the only single rank that keeps the share in every layer; a percentile would cut some
    layers below it). Parameter counts of the factors now, at `overall`, and at the per-layer ranks."""

    energy: float
    ranks: dict[str, int]
    kept: dict[str, float]  # share kept at the layer's own suggested rank
    overall: int
    params_now: int
    params_at_overall: int
    params_at_layer_ranks: int


def suggest_ranks(layers: list[tuple[str, int, int, list[float]]], energy: float) -> RankSuggestion:
    """`layers`: (path, rank, factor parameters, singular values of s B A) per layer (spectrum.LayerInfo's
    fields). A layer's factors hold params / rank parameters per unit of rank."""
    check_energy(energy)
    ranks = {path: min(rank, energy_rank(values, energy)) for path, rank, _, values in layers if rank}
    overall = max(ranks.values(), default=0)
    per_unit = {path: params // rank for path, rank, params, _ in layers if rank}
    return RankSuggestion(
        energy, ranks, {path: kept_share(values, ranks[path]) for path, rank, _, values in layers if rank}, overall,
        params_now=sum(params for _, _, params, _ in layers),
        params_at_overall=sum(per_unit[p] * min(overall, r) for p, r, _, _ in layers if r),
        params_at_layer_ranks=sum(per_unit[p] * k for p, k in ranks.items()),
    )


# -- a whole adapter file ----------------------------------------------------------------------------------------
@dataclass
class LayerResize:
    path: str
    old_rank: int
    new_rank: int
    kept: float  # share of the update's energy kept


def _factor_roles(parts: dict[str, torch.Tensor], path: str) -> tuple[str, str]:
    a_role = next((r for r in A_ROLES if r in parts), None)
    b_role = next((r for r in B_ROLES if r in parts), None)
    if a_role is None or b_role is None:
        raise ConfigError(f"layer {path}: no lora_A / lora_B pair in the file; only plain LoRA layers can be resized")
    return a_role, b_role


def check_plain(file: AdapterFile) -> None:
    """Refuse what truncating s B A would not describe exactly: a variant (DoRA's magnitude, ...), lora_B biases,
    a raw PiSSA / OLoRA file (grouped-convolution factors are refused per layer in resize_file)."""
    config = file.config
    init = str(config.init_lora_weights)
    if init.startswith("pissa") or init == "olora":  # a raw PiSSA / OLoRA file also changes the base when it loads
        raise ConfigError(f"{file.directory} is a raw {init} adapter (it means something only on a base decomposed "
                          "again at load); save it in its default plain form (save_adapter without pissa_raw) first")
    flags = [f for f in config_flags() if getattr(config, f, False)]
    if file.variants or flags or config.peft_type != "LORA":
        what = ", ".join([v.title for v in file.variants] or flags or [config.peft_type])
        raise ConfigError(f"{file.directory} is a {what} adapter; resize handles plain LoRA only (its extra tensors "
                          "are not part of s B A). Fold it to plain LoRA first, or keep its rank")
    if config.lora_bias:
        raise ConfigError(f"{file.directory} has lora_bias=True; resize handles adapters without a lora_B bias")


def resize_file(file: AdapterFile, rank: int | None = None, energy: float | None = None
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[LayerResize]]:
    """(config values, tensors under file keys, per-layer report) of the resized adapter. Exactly one of `rank`
    (the same cap for every layer) or `energy` (per layer, the smallest rank keeping that share)."""
    if (rank is None) == (energy is None):
        raise ConfigError("give exactly one of rank=K or energy=share")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"rank={rank!r}: expected an integer >= 1")
    if energy is not None:
        check_energy(energy)
    check_plain(file)
    layers, others = file.split()
    prefix = {_layer_path(k): k[: len(k) - len(_tail(k))] for k in file.tensors if _tail(k)}
    tensors: dict[str, torch.Tensor] = dict(others)  # modules_to_save copies, trained base biases: unchanged
    report: list[LayerResize] = []
    for path in sorted(layers):
        parts = layers[path]
        a_role, b_role = _factor_roles(parts, path)
        a, b = parts[a_role], parts[b_role]
        r = a.shape[0]
        a2, b2 = a.reshape(r, -1), b.reshape(b.shape[0], -1)  # (r, in), (out, r)
        if b2.shape[1] != r:
            raise ConfigError(f"layer {path}: a grouped convolution's factors cannot be resized")
        scaling = file.config.scaling_for(path)
        values = (factored_svd(a2, b2)[1] * abs(scaling)).tolist()
        k = min(r, rank if rank is not None else energy_rank(values, energy))
        new_a, new_b = truncate(a2, b2, scaling, k)
        tensors[prefix[path] + a_role] = new_a.reshape(k, *a.shape[1:]).to(a.dtype).contiguous()
        tensors[prefix[path] + b_role] = new_b.reshape(b.shape[0], k, *b.shape[2:]).to(b.dtype).contiguous()
        for role, tensor in parts.items():  # anything else the layer holds (none for plain LoRA today)
            if role not in (a_role, b_role):
                tensors[prefix[path] + role] = tensor
        report.append(LayerResize(path, r, k, kept_share(values, k)))
    ranks = {item.path: item.new_rank for item in report}
    top = max(ranks.values()) if ranks else file.config.r
    patterns = {re.escape(p): k for p, k in ranks.items() if k != top}
    config = replace(file.config, r=top, lora_alpha=top, use_rslora=False, rank_pattern=patterns,
                     alpha_pattern=dict(patterns), init_lora_weights=True)  # alpha = r everywhere: scaling 1
    return config.to_dict(), tensors, report


def _tail(key: str) -> str:
    """The factor role a file key ends with ("lora_A.weight", ...), or ""."""
    return next((role for role in (*A_ROLES, *B_ROLES) if key.endswith("." + role)), "")


def _layer_path(key: str) -> str:
    return strip_prefix(key)[: -len(_tail(key)) - 1]
