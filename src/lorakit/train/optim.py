"""AdamW over the trainable parameters, in groups (a variant may give its tensors their own: LoRA+'s lora_B learns
faster), and warmup + decay schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from lorakit.train.config import TrainingConfig
from lorakit.train.methods import is_head
from lorakit.variants.registry import all_variants

HEAD_MARKER = ".modules_to_save."  # fully trained copies, e.g. a new classification head


def param_groups(model: nn.Module, cfg: TrainingConfig) -> list[dict]:
    """Trainable parameters in named groups, each with its learning rate and weight decay.

    lora_A (and other adapter tensors, and the base weights of full fine-tuning): lr; lora_B: loraplus_lr_ratio *
    lr; modules_to_save and a full / probe run's head: head_lr (or lr);
    biases and 1-d tensors (norms, a variant's vectors) take no weight decay."""
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        dotted = f".{name}"
        if HEAD_MARKER in dotted or is_head(name):  # is_head: the plain head of a full / probe run
            kind, lr = "head", cfg.head_lr if cfg.head_lr is not None else cfg.lr
        else:
            default = "weights" if cfg.method == "full" else "lora_A"  # weights: the base, in full fine-tuning
            kind, lr = _variant_group(dotted, cfg) or (default, cfg.lr)
        decay = cfg.weight_decay if param.ndim >= 2 else 0.0
        key = f"{kind}" if decay else f"{kind}_no_decay"
        group = groups.setdefault(key, {"name": key, "params": [], "param_names": [], "lr": lr,
                                        "weight_decay": decay})
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def _variant_group(dotted_name: str, cfg: TrainingConfig) -> tuple[str, float] | None:
    """(group kind, lr) a registered variant gives this parameter (e.g. LoRA+'s lora_B), or None."""
    for variant in all_variants():
        rule = variant.training.param_group
        group = None if rule is None else rule(dotted_name, cfg)
        if group is not None:
            return group
    return None


def build_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    if not groups:
        raise RuntimeError("the model has no trainable parameters (was an adapter added?)")
    for group in groups:
        group.pop("param_names")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)


def warmup_steps(cfg: TrainingConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_ratio * total_steps)


def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warmup, then decay to min_ratio."""
    if step < warmup:
        return (step + 1) / (warmup + 1)  # never exactly 0, so the first step moves the weights
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


class Schedule:
    """A picklable lr multiplier (its fields go into the scheduler's state_dict, so resume restores them)."""

    def __init__(self, total: int, warmup: int, kind: str, min_ratio: float) -> None:
        self.total, self.warmup, self.kind, self.min_ratio = total, warmup, kind, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total, self.warmup, self.kind, self.min_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, total_steps: int):
    schedule = Schedule(total_steps, warmup_steps(cfg, total_steps), cfg.scheduler, cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
