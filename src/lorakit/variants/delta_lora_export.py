"""A Delta-LoRA run saved as an ordinary LoRA adapter of twice the rank, exact on the ORIGINAL base model.

Delta-LoRA (variants/delta_lora.py) leaves the model at W_T + s·B_T·A_T with W_T = W_0 + λ·s·(B_T·A_T − B_K·A_K),
so the trained model is

    W_0 + s·[(1 + λ)·B_T·A_T − λ·B_K·A_K]  =  W_0 + s'·B'·A'   with   A' = [A_T; A_K],  B' = (s/s')·[(1+λ)·B_T, −λ·B_K]

a rank-2r update of the untouched base (variants/export_fold.py, shared with PiSSA / OLoRA; s' = s by the doubled
config's lora_alpha). Saving that instead of (A_T, B_T) means the adapter file alone reproduces the run:
`load_adapter` on a fresh base, `lorakit merge`, PEFT and the server all see the Delta-LoRA model, and nothing
depends on W_T, which no file holds.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from lorakit.adapters import get_config
from lorakit.io.checkpoint import adapter_state_dict, unwrap_model, write_adapter_files
from lorakit.variants.delta_lora import DeltaLoraHook
from lorakit.variants.export_fold import doubled_config, fold_pairs


def delta_lora_export(model: nn.Module, hook: DeltaLoraHook):
    """(rank-2r LoraConfig, file tensors) equal to the Delta-LoRA model on the original base weights."""
    model = unwrap_model(model)
    name = hook.config.adapter_name
    config = get_config(model, name)
    if not hook.anchor:  # W never moved (the run stopped before start_step): the adapter is the whole update
        return config, adapter_state_dict(model, name)
    export = doubled_config(config)
    tensors = adapter_state_dict(model, name)
    anchors = {path: (layer, *hook.anchor[path]) for path, layer in hook.layers.items()}
    ratio = hook.config.update_ratio
    fold_pairs(model, name, export, anchors, trained=1 + ratio, anchor=-ratio, tensors=tensors)
    return export, tensors


def save_delta_lora(model: nn.Module, path: str | os.PathLike, hook: DeltaLoraHook) -> Path:
    """Save the Delta-LoRA model as an adapter for the original base (see the module doc); atomic like
    save_adapter. The weights' metadata records the run's update_ratio and trained rank under lorakit_delta_lora."""
    export, tensors = delta_lora_export(model, hook)
    folded = bool(hook.anchor)
    extra = {"lorakit_delta_lora": {"update_ratio": hook.config.update_ratio, "start_step": hook.config.start_step,
                                    "trained_r": export.r // 2 if folded else export.r, "folded": folded}}
    return write_adapter_files(unwrap_model(model), path, hook.config.adapter_name, export, tensors, extra)
