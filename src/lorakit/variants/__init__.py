"""LoRA variants: DoRA (layers/dora.py, `use_dora=True`), AdaLoRA, Delta-LoRA, LongLoRA; LoRA+ is train/optim.py's.

The trainer asks `hooks_for(model, train_cfg)` for the TrainHooks the model's adapters and the training config
need: AdaLoRA's allocator (for every trainable adapter whose config is an AdaLoraConfig) and Delta-LoRA's W
update (a `delta_lora` section). LongLoRA changes the model before training: `prepare_longlora` (or
`enable_s2_attn` + `longlora_modules_to_save`) when the config has a `longlora` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lorakit.adapters import adapter_configs
from lorakit.config import LoraConfig
from lorakit.train.hooks import TrainHook
from lorakit.variants.adalora import AdaLoraConfig, AdaLoraHook, allocate_ranks, budget_schedule, plot_ranks
from lorakit.variants.adalora_io import load_adalora, save_adalora
from lorakit.variants.delta_lora import DeltaLoraConfig, DeltaLoraHook
from lorakit.variants.longlora import (
    LongLoraConfig,
    disable_s2_attn,
    enable_s2_attn,
    longlora_modules_to_save,
    prepare_longlora,
    s2_attention,
    s2_attn,
)


def _section(train_cfg: Any, name: str) -> Any:
    if train_cfg is None:
        return None
    if isinstance(train_cfg, Mapping):
        return train_cfg.get(name)
    return getattr(train_cfg, name, None)


def adapter_config_from_dict(values: Mapping[str, Any]) -> LoraConfig:
    """A `lora` config section as a config object: AdaLoraConfig when peft_type is "ADALORA", else LoraConfig."""
    values = dict(values)
    if values.get("peft_type") == "ADALORA":
        return AdaLoraConfig.from_dict(values)
    return LoraConfig.from_dict(values)


def hooks_for(model: nn.Module, train_cfg: Any = None, total_steps: int | None = None) -> list[TrainHook]:
    """TrainHooks for this model and training config (a mapping or an object with attributes).

    `delta_lora`: a DeltaLoraConfig or a dict of its fields (None / absent: off). `total_steps`: the run's number
    of optimizer steps, used as AdaLoRA's total_step when its config leaves it unset."""
    hooks: list[TrainHook] = []
    for name, config in adapter_configs(model).items():
        if isinstance(config, AdaLoraConfig) and not config.inference_mode:
            hooks.append(AdaLoraHook(model, config, name, total_step=total_steps))
    delta = _section(train_cfg, "delta_lora")
    if delta:
        config = delta if isinstance(delta, DeltaLoraConfig) else DeltaLoraConfig.from_dict(dict(delta))
        hooks.append(DeltaLoraHook(model, config))
    return hooks


__all__ = [
    "AdaLoraConfig",
    "AdaLoraHook",
    "DeltaLoraConfig",
    "DeltaLoraHook",
    "LongLoraConfig",
    "adapter_config_from_dict",
    "allocate_ranks",
    "budget_schedule",
    "disable_s2_attn",
    "enable_s2_attn",
    "hooks_for",
    "load_adalora",
    "longlora_modules_to_save",
    "plot_ranks",
    "prepare_longlora",
    "s2_attention",
    "s2_attn",
    "save_adalora",
    "save_delta_lora",
]


def __getattr__(name: str):
    if name == "save_delta_lora":  # imported lazily: it needs lorakit.io, which imports lorakit.adapters
        from lorakit.variants.delta_lora_export import save_delta_lora

        return save_delta_lora
    raise AttributeError(f"module 'lorakit.variants' has no attribute {name!r}")
