"""The built-in variants' registry entries: the glue from each variant's own module to the shared code.

`import lorakit` imports this module, so the registry is complete before any adapter is read or built.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.adapters import adapter_configs
from lorakit.errors import ConfigError
from lorakit.variants.adalora import AdaLoraConfig, AdaLoraHook, plot_ranks, rank_per_layer
from lorakit.variants.adalora_io import copy_adalora_tensors, read_adalora_config, save_adalora
from lorakit.variants.delta_lora import DeltaLoraConfig, DeltaLoraHook
from lorakit.variants.delta_lora_export import save_delta_lora
from lorakit.variants.dora import make_dora
from lorakit.variants.longlora import LongLoraConfig, enable_s2_attn, longlora_modules_to_save
from lorakit.variants.loraplus import loraplus_group
from lorakit.variants.pissa import save_residual_init
from lorakit.variants.pissa_init import decompose, rewrites_base
from lorakit.variants.registry import TrainingHooks, Variant, register_variant, variants_of


# -- DoRA ------------------------------------------------------------------------------------------------------
def _dora_row_factor(parts: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, matrix: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, bool]:
    """g = m / ||W + s B A||, per output row, from a file's tensors (dense: computed once when an adapter is read);
    it scales the base output too."""
    norm = (matrix + scale * (b @ a)).norm(dim=1)
    return parts["lora_magnitude_vector"].reshape(-1).to(a.device, a.dtype) / norm, True


DORA = Variant(name="dora", title="DoRA", flag="use_dora", make_layer=make_dora,
               file_roles=("lora_magnitude_vector",), row_factor=_dora_row_factor, keeps_fp32=True)


# -- AdaLoRA ---------------------------------------------------------------------------------------------------
ADALORA_PLOT = "adalora_ranks.png"


def _adalora_plain_parts(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SVD triplets as plain LoRA: A = Λ ⊙ Q, B = P (a layer pruned to rank 0 gives rank-0 factors)."""
    return {"lora_A.weight": parts["lora_A"] * parts["lora_E"], "lora_B.weight": parts["lora_B"]}


def _adalora_hooks(model: nn.Module, section: Any, total_steps: int | None) -> list:
    return [AdaLoraHook(model, config, name, total_step=total_steps) for name, config in adapter_configs(model).items()
            if isinstance(config, AdaLoraConfig) and not config.inference_mode]


def _adalora_summary(model: nn.Module, adapter_name: str, hook: Any, out: Path, plot: bool) -> dict[str, Any]:
    if not isinstance(hook, AdaLoraHook):
        return {}
    ranks = rank_per_layer(model, adapter_name)
    entry = {"ranks": ranks, "total_rank": sum(ranks.values()), "target_total_rank": hook.target_budget,
             "initial_total_rank": hook.init_budget}
    if plot:
        try:
            plot_ranks(ranks, str(out / ADALORA_PLOT))
            entry["plot"] = str(out / ADALORA_PLOT)
        except ConfigError:  # no matplotlib: the ranks are in summary.json anyway
            pass
    return {"adalora": entry}


def _adalora_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    ada = summary.get("adalora")
    if not ada:
        return []
    ranks = sorted(ada["ranks"].values())
    return [("AdaLoRA total rank", f"{ada['total_rank']} (from {ada['initial_total_rank']}, target "
             f"{ada['target_total_rank']}); per layer {ranks[0]}..{ranks[-1]}"
             + (f", plot {ada['plot']}" if ada.get("plot") else ""))]


def _adalora_describe(config: AdaLoraConfig, total_rank: int) -> str:
    return f"AdaLoRA: init_r={config.init_r} target_r={config.target_r}; ranks kept: {total_rank} in total " \
           "(per layer below)"


ADALORA = Variant(
    name="adalora", title="AdaLoRA", peft_type="ADALORA", config_class=AdaLoraConfig, file_roles=("lora_E",),
    read_config=read_adalora_config, save=lambda model, path, name, raw=False: save_adalora(model, path, name),
    copy_tensors=copy_adalora_tensors, plain_parts=_adalora_plain_parts,
    consistency=lambda config, tensors: None,  # ranks vary per layer by design; its reader checks the triplets
    keeps_fp32=True, describe=_adalora_describe,
    training=TrainingHooks(hooks=_adalora_hooks, summary=_adalora_summary, report_rows=_adalora_rows,
                           run_files=(ADALORA_PLOT,)),
)


# -- Delta-LoRA ------------------------------------------------------------------------------------------------
def _delta_check(cfg: Any) -> None:
    """Run-config combinations Delta-LoRA cannot train, refused before any model is loaded."""
    if variants_of(cfg.lora):
        raise ConfigError("delta_lora moves W by the change of s·B·A, which needs plain LoRA; remove the "
                          f"delta_lora section, or {_variant_settings(cfg.lora)}")
    if cfg.model.quantization:
        raise ConfigError(f"delta_lora updates the base weights in place; model.quantization="
                          f"{cfg.model.quantization!r} keeps them packed. Use a full-precision base")
    section = cfg.delta_lora
    if section.adapter_name not in ("default", cfg.output.adapter_name):
        raise ConfigError(f"delta_lora.adapter_name={section.adapter_name!r} differs from "
                          f"output.adapter_name={cfg.output.adapter_name!r}, the adapter being trained")
    section.adapter_name = cfg.output.adapter_name


def _variant_settings(lora: Any) -> str:
    """The settings that switch the variants of `lora` on, e.g. "lora.use_dora / lora.peft_type=ADALORA"."""
    parts = [f"lora.{v.flag}" if v.flag else f"lora.peft_type={v.peft_type}" if v.peft_type
             else "lora.init_lora_weights" for v in variants_of(lora)]
    return " / ".join(parts)


def _delta_hooks(model: nn.Module, section: Any, total_steps: int | None) -> list:
    config = section if isinstance(section, DeltaLoraConfig) else DeltaLoraConfig.from_dict(dict(section))
    return [DeltaLoraHook(model, config)]


def _delta_save(model: nn.Module, directory: Path, adapter_name: str, hooks: list) -> bool:
    """A Delta-LoRA run saves its adapter with the change of W folded in (variants/delta_lora_export.py)."""
    hook = next((h for h in hooks if isinstance(h, DeltaLoraHook)), None)
    if hook is None:
        return False
    save_delta_lora(model, directory, hook)
    return True


def _delta_summary(model: nn.Module, adapter_name: str, hook: Any, out: Path, plot: bool) -> dict[str, Any]:
    if not isinstance(hook, DeltaLoraHook):
        return {}
    form = "rank-2r folded (exact on the original base)" if hook.anchor else \
        "plain (W never moved: the run ended before start_step)"
    return {"delta_lora": {"update_ratio": hook.config.update_ratio, "start_step": hook.config.start_step,
                           "adapter_form": form}}


def _delta_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    return [("Delta-LoRA adapter", summary["delta_lora"]["adapter_form"])] if summary.get("delta_lora") else []


DELTA_LORA = Variant(
    name="delta_lora", title="Delta-LoRA", section="delta_lora", section_class=DeltaLoraConfig,
    training=TrainingHooks(check=_delta_check, hooks=_delta_hooks, save=_delta_save, summary=_delta_summary,
                           report_rows=_delta_rows),
)


# -- LongLoRA --------------------------------------------------------------------------------------------------
def _longlora_check(cfg: Any) -> None:
    if cfg.model.task != "causal-lm":
        raise ConfigError(f"longlora (shifted sparse attention) trains causal language models; model.task is "
                          f"{cfg.model.task!r}. Remove the longlora section or use model.task=causal-lm")


def _longlora_adapter_config(base: nn.Module, section: LongLoraConfig, lora: Any) -> Any:
    """Embeddings and norms join modules_to_save."""
    saved = sorted(set(lora.modules_to_save or []) | set(longlora_modules_to_save(base, section)))
    return dataclasses.replace(lora, modules_to_save=saved or None)


LONGLORA = Variant(
    name="longlora", title="LongLoRA", section="longlora", section_class=LongLoraConfig,
    training=TrainingHooks(check=_longlora_check, adapter_config=_longlora_adapter_config, prepare=enable_s2_attn),
)


# -- PiSSA / OLoRA ---------------------------------------------------------------------------------------------
def _residual_refusal(config: Any) -> str:
    return (f"a raw {config.init_lora_weights} adapter: it holds factors for a base whose weights were replaced by a "
            "residual, so applying it to this model's weights would serve a different model; save it again with "
            "lorakit.save_adapter (without pissa_raw=True), which writes a plain LoRA exact on the original base")


PISSA = Variant(name="pissa", title="PiSSA / OLoRA", owns_init=rewrites_base, decompose=decompose,
                save=save_residual_init,
                serve_refusal=_residual_refusal)


# -- LoRA+ ------------------------------------------------------------------------------------------------------
LORAPLUS = Variant(name="loraplus", title="LoRA+", training=TrainingHooks(param_group=loraplus_group))


for _variant in (DORA, ADALORA, DELTA_LORA, LONGLORA, PISSA, LORAPLUS):
    register_variant(_variant, replace=True)
