"""Adapter files of a wrapper model: the files describe the model it wraps, the wrapper's own head is a sidecar.

A wrapper (hf/classifier.py's MeanPoolClassifier: an AutoModel as `.encoder` plus a mean-pooled `classifier`)
names the submodule its adapters belong to in the class attribute `lorakit_base_path`. Its in-memory keys carry
that prefix (`encoder.encoder.layer.0...`); written as they are, PEFT and transformers.load_adapter accept the
file on an AutoModel and load NOTHING (no module `encoder.encoder` there). So a save writes:

  adapter_model.safetensors   the base's keys (base_model.model.encoder.layer.0...lora_A.weight); the config's
                              task_type FEATURE_EXTRACTION (PEFT's for an AutoModel) and no modules_to_save
                              outside the base; fingerprint of the base: loads on AutoModel in PEFT and lorakit
  adapter_head.safetensors    the wrapper's trained modules outside the base (the classifier) under their own
                              keys (classifier.weight); not a PEFT file, so PEFT never sees a module AutoModel lacks.
                              Its sha256 is in the weights' records (lorakit_head_sha256): a head from another save
                              is refused. Written before the pair, whose config is renamed in last.

A load onto the wrapper takes either layout: the base's keys (this one) or the wrapper's (files from before).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import AdapterFileError
from lorakit.inject import trainable_copies
from lorakit.io.atomic import replace_files
from lorakit.io.keys import PREFIX, layer_path_of, strip_prefix

BASE_ATTR = "lorakit_base_path"
HEAD_NAME = "adapter_head.safetensors"
HEAD_SHA = "lorakit_head_sha256"
BASE_TASK = "FEATURE_EXTRACTION"  # PEFT's task type for a bare AutoModel


def base_path(model: nn.Module) -> str | None:
    """The submodule a wrapper's adapter files describe; None for an ordinary model."""
    return getattr(type(model), BASE_ATTR, None)


# -- saving -------------------------------------------------------------------------------------------------------
def for_base_model(model: nn.Module, directory: Path, config: LoraConfig, tensors: dict[str, torch.Tensor],
                   records: dict[str, Any]) -> tuple[nn.Module, LoraConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Write the head sidecar into `directory`; return what the adapter pair should hold instead:
    (the base module, its config, its tensors, records)."""
    root = base_path(model)
    inside, head = {}, {}
    for key, tensor in tensors.items():
        rest = strip_prefix(key)
        if rest.startswith(root + "."):
            inside[PREFIX + rest[len(root) + 1:]] = tensor
        else:
            head[rest] = tensor
    outside = [p for p, _ in trainable_copies(model) if not p.startswith(root + ".")]
    kept = [n for n in config.modules_to_save or [] if not any(p == n or p.endswith("." + n) for p in outside)]
    base_config = dataclasses.replace(config, modules_to_save=kept or None, task_type=BASE_TASK)
    records = dict(records)
    if head:
        data = safetensors_save(head, metadata={"format": "pt"})
        directory.mkdir(parents=True, exist_ok=True)
        replace_files(directory, {HEAD_NAME: data})
        records[HEAD_SHA] = hashlib.sha256(data).hexdigest()
    else:
        (directory / HEAD_NAME).unlink(missing_ok=True)
    return model.get_submodule(root), base_config, inside, records


# -- loading ------------------------------------------------------------------------------------------------------
def in_base_layout(model: nn.Module, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether the file's layers are paths inside the wrapper's base (this layout) rather than in the wrapper."""
    root = base_path(model)
    paths = {p for p, _ in model.named_modules()}
    layers = {layer_path_of(k) for k in tensors}
    return bool(layers) and all(f"{root}.{p}" in paths for p in layers) and not all(p in paths for p in layers)


def for_wrapper(model: nn.Module, config: LoraConfig, tensors: dict[str, torch.Tensor], records: dict[str, Any],
                directory: Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """A base-layout file as the wrapper's config and tensors: keys under the base path, the head read back."""
    root = base_path(model)
    out = {PREFIX + root + "." + strip_prefix(k): v for k, v in tensors.items()}
    head = read_head(directory, records.get(HEAD_SHA))
    modules = sorted({k.rsplit(".", 1)[0] for k in head})
    out.update({PREFIX + k: v for k, v in head.items()})
    saved = [n for n in config.modules_to_save or [] if n not in modules]
    config = dataclasses.replace(config, modules_to_save=(saved + modules) or None)
    return config, out


def read_head(directory: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    path = directory / HEAD_NAME
    if expected_sha256 is None:
        return {}  # the adapter had no head
    if not path.is_file():
        raise AdapterFileError(f"{directory} lacks {HEAD_NAME}, the classification head saved with this adapter")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise AdapterFileError(f"{path} is not the head saved with this adapter (edited, or from another save); "
                               "save the adapter again")
    try:
        return safetensors_load(data)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise AdapterFileError(f"{path} is corrupt ({exc})") from None
