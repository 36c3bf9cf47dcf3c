"""What the registered variants change in a `lorakit train` run (each variant's `training` entry in the registry).

    adapter_config    the `lora` config with what a variant section adds, before injection
    hooks             TrainHooks the loop calls (train/hooks.py); `hooks_for` collects them
    prepare           changes to the model once the adapter is on
    save              a variant that saves the trained adapter itself (else save_adapter)
    summary / report  extra summary.json entries and report rows
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import ConfigError
from lorakit.io.checkpoint import save_adapter
from lorakit.train.hooks import TrainHook
from lorakit.variants.registry import Variant, all_variants, for_peft_type


def section_of(train_cfg: Any, name: str | None) -> Any:
    """A variant's section of a training config (a mapping or an object with attributes); None when off."""
    if train_cfg is None or name is None:
        return None
    if isinstance(train_cfg, Mapping):
        return train_cfg.get(name)
    return getattr(train_cfg, name, None)


def _active(train_cfg: Any) -> list[tuple[Variant, Any]]:
    """(variant, its section) for the variants a run may involve: section-less ones always, others when set."""
    return [(v, section_of(train_cfg, v.section)) for v in all_variants()
            if v.section is None or section_of(train_cfg, v.section)]


def adapter_config_from_dict(values: Mapping[str, Any]) -> LoraConfig:
    """A `lora` config section as a config object: the registered variant's config class for its peft_type."""
    variant = for_peft_type(values.get("peft_type"))
    klass = variant.config_class if variant is not None and variant.config_class is not None else LoraConfig
    return klass.from_dict(dict(values))


def hooks_for(model: nn.Module, train_cfg: Any = None, total_steps: int | None = None) -> list[TrainHook]:
    """TrainHooks for this model and training config (a mapping or an object with attributes).

    A variant section may be its dataclass or a dict of its fields (None / absent: off). `total_steps`: the run's
    number of optimizer steps, for variants that schedule over it (AdaLoRA's total_step when unset)."""
    hooks: list[TrainHook] = []
    for variant, section in _active(train_cfg):
        if variant.training.hooks is not None:
            hooks += variant.training.hooks(model, section, total_steps)
    return hooks


def variant_lora_config(cfg: Any, base: nn.Module, lora: Any) -> Any:
    """The adapter config with what the variant sections add (e.g. modules to train beside the adapter)."""
    for variant, section in _active(cfg):
        if variant.training.adapter_config is not None and section is not None:
            lora = variant.training.adapter_config(base, section, lora)
    return lora


def attach_variants(cfg: Any, model: nn.Module, total_steps: int, distributed_mode: str | None) -> list[TrainHook]:
    """Turn on what the adapter config and the variant sections ask for; the hooks the loop must call."""
    hooks = hooks_for(model, cfg, total_steps)
    if hooks and distributed_mode == "fsdp":
        names = sorted({type(h).__name__.removesuffix("Hook") for h in hooks})
        raise ConfigError(f"{', '.join(names)} changes parameters outside the optimizer, which FSDP shards; "
                          "train it with training.distributed=ddp")
    for variant, section in _active(cfg):
        if variant.training.prepare is not None and section is not None:
            variant.training.prepare(model, section)
    return hooks


def save_trained_adapter(model: nn.Module, directory: Path, adapter_name: str, hooks: list[TrainHook]) -> None:
    """save_adapter, unless a variant of the run saves its adapter itself (e.g. with the change of W folded in)."""
    for variant in all_variants():
        if variant.training.save is not None and variant.training.save(model, directory, adapter_name, hooks):
            return
    save_adapter(model, directory, adapter_name)


def variant_summary(model: nn.Module, adapter_name: str, hooks: list[TrainHook], out: Path,
                    plot: bool) -> dict[str, Any]:
    """Extra summary.json entries from the variants' hooks."""
    summary: dict[str, Any] = {}
    for hook in hooks:
        for variant in all_variants():
            if variant.training.summary is not None:
                summary.update(variant.training.summary(model, adapter_name, hook, out, plot))
    return summary


def report_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of the run report from the variants' summary.json entries."""
    rows: list[tuple[str, str]] = []
    for variant in all_variants():
        if variant.training.report_rows is not None:
            rows += variant.training.report_rows(summary)
    return rows


def run_files() -> tuple[str, ...]:
    """Files the variants may write into a run folder."""
    return tuple(name for v in all_variants() for name in v.training.run_files)
