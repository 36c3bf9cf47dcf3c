"""The LoRA variants inside `lorakit train`: what each config section changes in the run.

  lora.peft_type: ADALORA   AdaLoraHook (importance, budget schedule, orthogonality loss) runs every step; the
                            adapter is saved with its final per-layer ranks; adalora_ranks.png shows them
  delta_lora: {...}         DeltaLoraHook moves W after every step from delta_lora.start_step on; the adapter is
                            saved in its folded rank-2r form, exact on the original base (variants/delta_lora_export)
  longlora: {...}           embeddings and norms join modules_to_save; S²-Attn while training, full attention in eval
  lora.use_dora, training.loraplus_lr_ratio: handled by the layers and the optimizer, nothing to do here
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from lorakit.errors import ConfigError
from lorakit.io.checkpoint import save_adapter
from lorakit.train.hooks import TrainHook
from lorakit.variants import hooks_for
from lorakit.variants.adalora import AdaLoraHook, plot_ranks, rank_per_layer
from lorakit.variants.delta_lora import DeltaLoraHook
from lorakit.variants.delta_lora_export import save_delta_lora
from lorakit.variants.longlora import enable_s2_attn, longlora_modules_to_save

ADALORA_PLOT = "adalora_ranks.png"


def variant_lora_config(cfg: Any, base: nn.Module, lora: Any) -> Any:
    """The adapter config with what the variant sections add (LongLoRA: trainable embeddings and norms)."""
    if cfg.longlora is None:
        return lora
    extra = longlora_modules_to_save(base, cfg.longlora)
    saved = sorted(set(lora.modules_to_save or []) | set(extra))
    return dataclasses.replace(lora, modules_to_save=saved or None)


def attach_variants(cfg: Any, model: nn.Module, total_steps: int, distributed_mode: str | None) -> list[TrainHook]:
    """Turn on what the adapter config and the variant sections ask for; the hooks the loop must call."""
    hooks = hooks_for(model, {"delta_lora": cfg.delta_lora}, total_steps)
    if hooks and distributed_mode == "fsdp":
        names = sorted({type(h).__name__.removesuffix("Hook") for h in hooks})
        raise ConfigError(f"{', '.join(names)} changes parameters outside the optimizer, which FSDP shards; "
                          "train it with training.distributed=ddp")
    if cfg.longlora is not None:
        enable_s2_attn(model, cfg.longlora)
    return hooks


def save_trained_adapter(model: nn.Module, directory: Path, adapter_name: str, hooks: list[TrainHook]) -> None:
    """save_adapter, except a Delta-LoRA run, whose adapter must also carry the change of W."""
    delta = next((h for h in hooks if isinstance(h, DeltaLoraHook)), None)
    if delta is not None:
        save_delta_lora(model, directory, delta)
    else:
        save_adapter(model, directory, adapter_name)  # AdaLoRA: PEFT's format with rank_pattern


def variant_summary(model: nn.Module, adapter_name: str, hooks: list[TrainHook], out: Path,
                    plot: bool) -> dict[str, Any]:
    """Extra summary.json entries: AdaLoRA's final ranks (and their plot), Delta-LoRA's export form."""
    summary: dict[str, Any] = {}
    for hook in hooks:
        if isinstance(hook, AdaLoraHook):
            ranks = rank_per_layer(model, adapter_name)
            summary["adalora"] = {"ranks": ranks, "total_rank": sum(ranks.values()),
                                  "target_total_rank": hook.target_budget, "initial_total_rank": hook.init_budget}
            if plot:
                try:
                    plot_ranks(ranks, str(out / ADALORA_PLOT))
                    summary["adalora"]["plot"] = str(out / ADALORA_PLOT)
                except ConfigError:  # no matplotlib: the ranks are in summary.json anyway
                    pass
        if isinstance(hook, DeltaLoraHook):
            summary["delta_lora"] = {"update_ratio": hook.config.update_ratio, "start_step": hook.config.start_step,
                                     "adapter_form": "rank-2r folded (exact on the original base)" if hook.anchor
                                     else "plain (W never moved: the run ended before start_step)"}
    return summary
