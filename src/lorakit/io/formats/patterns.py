"""Per-module ranks and alphas (what kohya files and old diffusers files carry) -> one LoraConfig.

The most common rank becomes `r` and the most common alpha `lora_alpha`; every module that differs gets an entry in
rank_pattern / alpha_pattern keyed by its full module path (PEFT and lorakit match a pattern key against a dotted
suffix of the path, so a full path selects exactly that module).
"""

from __future__ import annotations

from collections import Counter

from lorakit.config import LoraConfig


def config_from_modules(ranks: dict[str, int], alphas: dict[str, float]) -> LoraConfig:
    """`ranks` / `alphas`: {module path: value}; a module missing from `alphas` has alpha = its rank."""
    paths = sorted(ranks)
    alpha_of = {p: float(alphas.get(p, ranks[p])) for p in paths}
    r = _most_common([ranks[p] for p in paths])
    alpha = _most_common([alpha_of[p] for p in paths])
    return LoraConfig(
        r=r, lora_alpha=_plain_number(alpha), target_modules=paths,
        rank_pattern={p: ranks[p] for p in paths if ranks[p] != r},
        alpha_pattern={p: _plain_number(alpha_of[p]) for p in paths if alpha_of[p] != alpha},
    )


def module_values(config: LoraConfig, paths: list[str]) -> tuple[dict[str, int], dict[str, float]]:
    """The inverse: each module's rank and its alpha as a file with alpha / rank scaling needs it (rsLoRA's
    alpha / sqrt(r) folded in, so the scaling is the same)."""
    ranks = {p: config.rank_for(p) for p in paths}
    alphas = {p: config.scaling_for(p) * ranks[p] for p in paths}
    return ranks, alphas


def _most_common(values: list) -> object:
    counts = Counter(values)
    best = max(counts.values())
    return min(v for v, n in counts.items() if n == best)  # ties: the smallest, so the result is deterministic


def _plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)
