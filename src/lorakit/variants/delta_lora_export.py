"""A Delta-LoRA run saved as an ordinary LoRA adapter of twice the rank, exact on the ORIGINAL base model.

Delta-LoRA (variants/delta_lora.py) leaves the model at W_T + s·B_T·A_T with W_T = W_0 + λ·s·(B_T·A_T − B_K·A_K),
so the trained model is

    W_0 + s·[(1 + λ)·B_T·A_T − λ·B_K·A_K]  =  W_0 + s'·B'·A'   with   A' = [A_T; A_K],  B' = (s/s')·[(1+λ)·B_T, −λ·B_K]

a rank-2r update of the untouched base (s' = the scaling of the rank-2r config). Saving that instead of (A_T, B_T)
means the adapter file alone reproduces the run: `load_adapter` on a fresh base, `lorakit merge`, PEFT and the
server all see the Delta-LoRA model, and nothing depends on W_T, which no file holds.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from lorakit.adapters import get_config
from lorakit.errors import ConfigError
from lorakit.io.checkpoint import adapter_state_dict, unwrap_model, write_adapter_files
from lorakit.io.keys import to_file_key
from lorakit.variants.delta_lora import DeltaLoraHook


def _parameter_keys(model: nn.Module) -> dict[int, str]:
    return {id(t): k for k, t in model.state_dict(keep_vars=True).items()}


def delta_lora_export(model: nn.Module, hook: DeltaLoraHook):
    """(rank-2r LoraConfig, file tensors) equal to the Delta-LoRA model on the original base weights."""
    model = unwrap_model(model)
    name = hook.config.adapter_name
    config = get_config(model, name)
    if not hook.anchor:  # W never moved (the run stopped before start_step): the adapter is the whole update
        return config, adapter_state_dict(model, name)
    export = dataclasses.replace(config, r=2 * config.r,
                                 rank_pattern={k: 2 * v for k, v in (config.rank_pattern or {}).items()})
    tensors = adapter_state_dict(model, name)
    keys, ratio = _parameter_keys(model), hook.config.update_ratio
    for path, layer in hook.layers.items():
        a_t, b_t = layer.lora_weights(name)
        a_k, b_k = (t.to(device=a_t.device, dtype=a_t.dtype) for t in hook.anchor[path])
        coef = layer.scaling[name] / export.scaling_for(path)
        with torch.no_grad():
            a_new = torch.cat([a_t, a_k.reshape(a_t.shape)], dim=0)  # rank is dim 0 of A, dim 1 of B, every type
            b_new = torch.cat([(1 + ratio) * b_t, -ratio * b_k.reshape(b_t.shape)], dim=1) * coef
        for tensor, new in ((a_t, a_new), (b_t, b_new)):
            file_key = to_file_key(keys[id(tensor)], name)
            if file_key not in tensors:
                raise ConfigError(f"Delta-LoRA export: no file key for {keys[id(tensor)]} (layer {path})")
            tensors[file_key] = new.detach().to("cpu").contiguous()
        lora_b = getattr(layer, "lora_B", None)
        bias = getattr(lora_b[name], "bias", None) if lora_b is not None and name in lora_b else None
        if bias is not None:  # lora_bias: s·b must stay s·b under the new scaling s'
            tensors[to_file_key(keys[id(bias)], name)] = (bias.detach() * coef).to("cpu").contiguous()
    return export, tensors


def save_delta_lora(model: nn.Module, path: str | os.PathLike, hook: DeltaLoraHook) -> Path:
    """Save the Delta-LoRA model as an adapter for the original base (see the module doc); atomic like
    save_adapter. The file records the run's update_ratio and trained rank under lorakit_delta_lora."""
    export, tensors = delta_lora_export(model, hook)
    folded = bool(hook.anchor)
    extra = {"lorakit_delta_lora": {"update_ratio": hook.config.update_ratio, "start_step": hook.config.start_step,
                                    "trained_r": export.r // 2 if folded else export.r, "folded": folded}}
    return write_adapter_files(unwrap_model(model), path, hook.config.adapter_name, export, tensors, extra)
