"""PiSSA / OLoRA adapters saved as plain LoRA of twice the rank, exact on the ORIGINAL base weights.

PiSSA and OLoRA start the adapter at the top of W's decomposition and move the base to the residual:
W_res = W - s·B0·A0 (pissa_init.py; layers/base.remember_initial keeps A0, B0 on the layer). After training the model is

    W_res + s·B·A  =  W + s·(B·A - B0·A0)  =  W + s'·B'·A'   with   A' = [A; A0],  B' = (s/s')·[B, -B0]

(variants/export_fold.py, PEFT's `path_initial_model_for_weight_conversion`). A file with the trained (A, B) alone only
means that model on a base decomposed again at load time, which servers and merge tools that apply W + s·B·A do
not do, and which a randomized SVD (pissa_niter_<k>) does not reproduce. So the file says init_lora_weights=True,
r = 2r, lora_alpha scaled to keep s, and holds (A', B'): any loader, on the original base, gives the trained model.
The raw form (trained A, B; the init kept in the config) is written only on request (save_adapter(pissa_raw=True)).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.adapters import get_config
from lorakit.config import LoraConfig
from lorakit.errors import AdapterFileError
from lorakit.inject import lora_layers
from lorakit.io.checkpoint import adapter_state_dict, write_adapter_files
from lorakit.layers.base import initial_factors
from lorakit.variants.export_fold import doubled_config, fold_pairs

RECORD = "lorakit_residual_init"  # {"init_lora_weights", "form": "plain" | "raw", "trained_r"} in the metadata


def residual_init_export(model: nn.Module, adapter_name: str,
                         raw: bool = False) -> tuple[LoraConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, file tensors, metadata records) of a PiSSA / OLoRA adapter: the rank-2r plain LoRA of the module
    doc, or with `raw` the trained factors as they are."""
    config = get_config(model, adapter_name)
    record = {"init_lora_weights": config.init_lora_weights, "form": "raw" if raw else "plain", "trained_r": config.r}
    tensors = adapter_state_dict(model, adapter_name)
    if raw:
        return config, tensors, {RECORD: record}
    anchors = {}
    for path, layer in lora_layers(model):
        if adapter_name not in layer.r:
            continue
        initial = initial_factors(layer, adapter_name)
        if initial is None:  # e.g. added on the meta device, where no decomposition ran
            raise AdapterFileError(
                f"cannot save adapter {adapter_name!r} as plain LoRA: layer {path} has no record of its initial "
                f"init_lora_weights={config.init_lora_weights!r} factors; save it with pissa_raw=True"
            )
        anchors[path] = (layer, *initial)
    export = doubled_config(config)
    fold_pairs(model, adapter_name, export, anchors, trained=1.0, anchor=-1.0, tensors=tensors)
    return export, tensors, {RECORD: record}


def save_residual_init(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                       raw: bool = False) -> Path:
    """save_adapter for a PiSSA / OLoRA adapter: the rank-2r fold exact on the original base (or, `raw`, the
    trained factors as they are, with the record saying so)."""
    export, tensors, records = residual_init_export(model, adapter_name, raw=raw)
    return write_adapter_files(model, path, adapter_name, export, tensors, records)
