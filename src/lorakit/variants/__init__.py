"""LoRA variants: the registry (registry.py) and one module per variant.

    dora.py (+ dora_autograd.py)                  DoRA, `LoraConfig(use_dora=True)`
    adalora.py, adalora_layer.py, adalora_io.py   AdaLoRA, `AdaLoraConfig` (peft_type "ADALORA")
    delta_lora.py, delta_lora_export.py           Delta-LoRA, the `delta_lora` training section
    longlora.py                                   LongLoRA, the `longlora` training section
    pissa.py                                      PiSSA / OLoRA: the rank-2r export (initial values: pissa_init.py)
    loraplus.py                                   LoRA+, `training.loraplus_lr_ratio`
    builtin.py                                    registers the above (`import lorakit` imports it)
    training.py                                   what the registered variants change in `lorakit train`

This package's own import stays light (the layers import the registry); the names below load on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AdaLoraConfig": "lorakit.variants.adalora",
    "AdaLoraHook": "lorakit.variants.adalora",
    "allocate_ranks": "lorakit.variants.adalora",
    "budget_schedule": "lorakit.variants.adalora",
    "plot_ranks": "lorakit.variants.adalora",
    "load_adalora": "lorakit.variants.adalora_io",
    "save_adalora": "lorakit.variants.adalora_io",
    "DeltaLoraConfig": "lorakit.variants.delta_lora",
    "DeltaLoraHook": "lorakit.variants.delta_lora",
    "save_delta_lora": "lorakit.variants.delta_lora_export",
    "LongLoraConfig": "lorakit.variants.longlora",
    "disable_s2_attn": "lorakit.variants.longlora",
    "enable_s2_attn": "lorakit.variants.longlora",
    "longlora_modules_to_save": "lorakit.variants.longlora",
    "prepare_longlora": "lorakit.variants.longlora",
    "s2_attention": "lorakit.variants.longlora",
    "s2_attn": "lorakit.variants.longlora",
    "adapter_config_from_dict": "lorakit.variants.training",
    "hooks_for": "lorakit.variants.training",
    "Variant": "lorakit.variants.registry",
    "TrainingHooks": "lorakit.variants.registry",
    "register_variant": "lorakit.variants.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lorakit.variants' has no attribute {name!r}")
