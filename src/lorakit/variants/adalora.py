"""AdaLoRA (Zhang et al., 2023): SVD-form adapters whose total rank shrinks to a budget during training.

Each adapted layer holds triplets (P_i, λ_i, Q_i) (variants/adalora_layer.py). While training:
  importance   per entry w: I = |w · ∂L/∂w|, sensitivity Ī ← β1·Ī + (1−β1)·I, uncertainty Ū ← β2·Ū + (1−β2)·|I − Ī|,
               score s(w) = Ī·Ū; per triplet S_i = s(λ_i) + mean_j s(P_ji) + mean_j s(Q_ij)
  budget       b(t) = b0 for t ≤ tinit; b_T + (b0 − b_T)·(1 − (t − tinit)/(T − tinit − tfinal))³ until T − tfinal;
               then b_T (b0 = init_r · layers, b_T = target_r · layers)
  masking      every deltaT steps keep the b(t) highest-scoring triplets over all layers (λ of the others = 0)
  regularizer  orth_reg_weight · mean over layers of ||PᵀP − I||²_F + ||QQᵀ − I||²_F (the paper's, squared)
The final keep-masks become the adapter's rank_pattern (PEFT's format), and the saved tensors hold the kept
triplets only (variants/adalora_io.py). The allocator is pure: `allocate_ranks(scores, budget)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import ConfigError, TargetError
from lorakit.inject import lora_layers
from lorakit.layers.base import AdapterSpec, LoraLayer
from lorakit.train.hooks import TrainHook
from lorakit.variants.adalora_layer import AdaLoraLinear, adalora_scaling

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = None


@dataclass
class AdaLoraConfig(LoraConfig):
    """LoraConfig's target selection and dropout, plus AdaLoRA's schedule. Field names are PEFT's AdaLoraConfig."""

    init_r: int = 12  # rank of every adapter at the start (the budget starts at init_r * layers)
    target_r: int = 8  # average rank at the end (the final budget is target_r * layers)
    tinit: int = 0  # warm-up steps before any pruning
    tfinal: int = 0  # last steps that train with the final ranks fixed
    deltaT: int = 1  # prune every deltaT steps during the budget phase
    beta1: float = 0.85  # EMA factor of the sensitivity
    beta2: float = 0.85  # EMA factor of the uncertainty
    orth_reg_weight: float = 0.5  # weight of the orthogonality regularizer
    total_step: int | None = None  # total optimizer steps (the trainer fills it from its max steps if unset)
    peft_type: str = "ADALORA"
    # rank_pattern (inherited): {module path: [keep?] * init_r}, written by the allocator; PEFT's meaning for AdaLoRA

    def __post_init__(self) -> None:
        kept, self.rank_pattern = self.rank_pattern or {}, {}
        self.peft_type = "LORA"  # LoraConfig validates the shared fields (it knows LoRA's rank_pattern only)
        try:
            super().__post_init__()
        finally:
            self.peft_type, self.rank_pattern = "ADALORA", kept
        for name in ("init_r", "target_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}={value!r}: expected a positive integer")
        if self.target_r > self.init_r:
            raise ConfigError(f"target_r={self.target_r} exceeds init_r={self.init_r}: AdaLoRA only prunes rank")
        for name in ("beta1", "beta2"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected a value in (0, 1), e.g. 0.85")
        if self.orth_reg_weight < 0:
            raise ConfigError(f"orth_reg_weight={self.orth_reg_weight!r}: expected >= 0")
        if self.deltaT <= 0 or self.tinit < 0 or self.tfinal < 0:
            raise ConfigError(f"deltaT={self.deltaT}, tinit={self.tinit}, tfinal={self.tfinal}: expected deltaT > 0, "
                              "tinit >= 0, tfinal >= 0")
        if self.use_dora or self.lora_bias or self.use_rslora:
            raise ConfigError("AdaLoRA does not combine with use_dora, lora_bias or use_rslora (nor does PEFT's)")
        if self.total_step is not None:
            self.check_schedule(self.total_step)

    def check_schedule(self, total_step: int) -> None:
        if total_step <= 0 or self.tinit >= total_step - self.tfinal:
            raise ConfigError(
                f"AdaLoRA schedule tinit={self.tinit}, tfinal={self.tfinal}, total_step={total_step} leaves no "
                "budget phase: need tinit < total_step - tfinal"
            )

    # -- what injection asks of a config --------------------------------------------------------------------
    def rank_for(self, module_path: str) -> int:
        keep = self.rank_pattern.get(module_path)
        return sum(bool(k) for k in keep) if keep is not None else self.init_r

    def alpha_for(self, module_path: str) -> float:
        return self.lora_alpha

    def scaling_for(self, module_path: str) -> float:
        return adalora_scaling(self.lora_alpha, self.init_r)  # the same for every layer, whatever rank it keeps

    def inject_layer(self, module: nn.Module, path: str, adapter_name: str) -> LoraLayer:
        """Wrap `module` in an AdaLoraLinear (or reuse one) and add the adapter. Called by lorakit.inject."""
        if isinstance(module, AdaLoraLinear):
            layer = module
        elif isinstance(module, LoraLayer):
            raise TargetError(
                f"layer {path} already holds LoRA adapters {module.adapter_names}; AdaLoRA and LoRA adapters cannot "
                "share a layer"
            )
        elif type(module) is nn.Linear or (Conv1D is not None and isinstance(module, Conv1D)):
            layer = AdaLoraLinear(module, fan_in_fan_out=not isinstance(module, nn.Linear))
        else:
            raise TargetError(
                f"AdaLoRA adapts nn.Linear and transformers' Conv1D; {path} is a {type(module).__name__}. Narrow "
                "target_modules"
            )
        spec = AdapterSpec(r=self.rank_for(path), lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                           init_lora_weights=self.init_lora_weights)
        layer.add_svd_adapter(adapter_name, spec, ranknum=self.init_r)
        return layer


# -- the schedule and the allocator: pure functions ----------------------------------------------------------------
def budget_schedule(step: int, init_budget: int, target_budget: int, tinit: int, tfinal: int, total_step: int,
                    delta_t: int = 1) -> tuple[int, bool]:
    """(total rank allowed at `step`, whether to prune now): constant, then cubic decay, then constant."""
    if step <= tinit:
        return init_budget, False
    if step > total_step - tfinal:
        return target_budget, True
    progress = (step - tinit) / (total_step - tfinal - tinit)
    budget = int((init_budget - target_budget) * (1 - progress) ** 3 + target_budget)
    return budget, step % delta_t == 0


def allocate_ranks(scores: dict[str, torch.Tensor], budget: int) -> dict[str, torch.Tensor]:
    """Keep the `budget` highest-scoring triplets across all layers: {layer: bool mask}, exactly `budget` True.

    Ties go to the earlier layer / triplet (stable sort), so the result is deterministic."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names])
    if not 0 <= budget <= flat.numel():
        raise ConfigError(f"rank budget {budget} is outside [0, {flat.numel()}] (the triplets there are)")
    order = torch.sort(flat, descending=True, stable=True).indices
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:budget]] = True
    sizes = [scores[n].numel() for n in names]
    return dict(zip(names, keep.split(sizes), strict=True))


class Importance:
    """Smoothed sensitivity Ī and uncertainty Ū of every adapter entry; score = Ī·Ū (the paper's s(w))."""

    def __init__(self, beta1: float, beta2: float) -> None:
        self.beta1, self.beta2 = beta1, beta2
        self.sensitivity: dict[str, torch.Tensor] = {}
        self.uncertainty: dict[str, torch.Tensor] = {}

    def update(self, key: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        ipt = (param.detach() * grad.detach()).abs()
        if key not in self.sensitivity:
            self.sensitivity[key] = torch.zeros_like(ipt)
            self.uncertainty[key] = torch.zeros_like(ipt)
        avg = self.sensitivity[key].mul_(self.beta1).add_(ipt, alpha=1 - self.beta1)
        self.uncertainty[key].mul_(self.beta2).add_((ipt - avg).abs(), alpha=1 - self.beta2)

    def score(self, key: str) -> torch.Tensor:
        return self.sensitivity[key] * self.uncertainty[key]

    def triplet_scores(self, prefix: str) -> torch.Tensor:
        """S_i = s(λ_i) + mean_j s(Q_ij) + mean_j s(P_ji), (r,)."""
        e, a, b = (self.score(f"{prefix}.{k}") for k in ("lora_E", "lora_A", "lora_B"))
        return e.view(-1) + a.mean(dim=1) + b.mean(dim=0)

    def state_dict(self) -> dict[str, Any]:
        return {"sensitivity": dict(self.sensitivity), "uncertainty": dict(self.uncertainty)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sensitivity = {k: v.clone() for k, v in state["sensitivity"].items()}
        self.uncertainty = {k: v.clone() for k, v in state["uncertainty"].items()}


# -- the training hook --------------------------------------------------------------------------------------------
def adalora_layers(model: nn.Module, adapter_name: str) -> list[tuple[str, AdaLoraLinear]]:
    return [(p, m) for p, m in lora_layers(model) if isinstance(m, AdaLoraLinear) and adapter_name in m.r]


class AdaLoraHook(TrainHook):
    """Adds the orthogonality loss, tracks importance after backward, prunes to the budget after each step."""

    def __init__(self, model: nn.Module, config: AdaLoraConfig, adapter_name: str = "default",
                 total_step: int | None = None) -> None:
        if config.total_step is None:
            if total_step is None:
                raise ConfigError("AdaLoRA needs total_step (the number of optimizer steps): set it in the config")
            config.check_schedule(total_step)
            config.total_step = total_step
        self.config, self.adapter_name = config, adapter_name
        layers = adalora_layers(model, adapter_name)
        if not layers:
            raise TargetError(f"the model has no AdaLoRA layers for adapter {adapter_name!r}")
        self.init_budget = sum(config.init_r for _ in layers)
        self.target_budget = config.target_r * len(layers)
        self.importance = Importance(config.beta1, config.beta2)
        self.budget = self.init_budget

    @property
    def final_step(self) -> int:
        """The step that fixes the final ranks: total_step - tfinal, or the last step when tfinal = 0 (PEFT would
        then never reach the target budget inside the run)."""
        return min(self.config.total_step - self.config.tfinal, self.config.total_step - 1)

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        if self.config.orth_reg_weight == 0:
            return None
        terms = [layer.orthogonality(self.adapter_name) for _, layer in adalora_layers(model, self.adapter_name)]
        return self.config.orth_reg_weight * torch.stack(terms).mean()

    def on_backward_end(self, model: nn.Module, step: int) -> None:
        if step >= self.final_step:
            return
        for path, layer in adalora_layers(model, self.adapter_name):
            for kind in ("lora_A", "lora_B", "lora_E"):
                param = getattr(layer, kind)[self.adapter_name]
                if param.grad is not None:
                    self.importance.update(f"{path}.{kind}", param, param.grad)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        layers = dict(adalora_layers(model, self.adapter_name))
        if step > self.final_step:  # ranks are fixed: keep the pruned singular values at zero
            self.apply(layers, {p: torch.tensor(k) for p, k in self.config.rank_pattern.items()})
            return
        budget, prune = budget_schedule(step, self.init_budget, self.target_budget, self.config.tinit,
                                        self.config.tfinal, self.config.total_step, self.config.deltaT)
        if step == self.final_step:
            budget, prune = self.target_budget, True
        self.budget = budget
        if not prune or not self.importance.sensitivity:
            return
        scores = {p: self.importance.triplet_scores(p) for p in layers}
        masks = allocate_ranks(scores, budget)
        self.apply(layers, masks)
        self.config.rank_pattern = {p: m.tolist() for p, m in masks.items()}
        if step == self.final_step:
            self.importance = Importance(self.config.beta1, self.config.beta2)

    def apply(self, layers: dict[str, AdaLoraLinear], masks: dict[str, torch.Tensor]) -> None:
        for path, keep in masks.items():
            layers[path].apply_mask(self.adapter_name, keep)

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance.state_dict(), "rank_pattern": dict(self.config.rank_pattern),
                "total_step": self.config.total_step, "budget": self.budget}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance.load_state_dict(state["importance"])
        self.config.rank_pattern = dict(state["rank_pattern"])
        self.config.total_step, self.budget = state["total_step"], state["budget"]


# -- the rank plot ----------------------------------------------------------------------------------------------
def rank_per_layer(model: nn.Module, adapter_name: str = "default") -> dict[str, int]:
    """Ranks in use now: triplets with a non-zero singular value, per layer."""
    return {p: int(torch.count_nonzero(layer.lora_E[adapter_name]).item())
            for p, layer in adalora_layers(model, adapter_name)}


def plot_ranks(ranks: dict[str, int], path: str, title: str = "AdaLoRA: rank given to each layer") -> None:
    """A PNG bar chart of the final rank of each layer (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting AdaLoRA ranks needs matplotlib: pip install matplotlib") from None
    names = list(ranks)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names)), 4.0 + 0.06 * max(map(len, names), default=0)))
    ax.bar(range(len(names)), [ranks[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("rank")
    ax.set_ylim(0, max(1, math.ceil(max(ranks.values(), default=1) * 1.1)))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
