"""`save_pretrained` of a transformers model with lorakit adapters writes the PEFT adapter, not the whole model.

transformers' own adapter integration does the same (only the adapter, keys under `base_model.model.`), and so
does PEFT's PeftModel; the class's save_pretrained would instead write every weight under lorakit's in-memory
keys (`base_layer.weight`, `lora_A.default.weight`), which `from_pretrained` cannot read (it re-initialises those
layers at random). So add_adapter sets an instance attribute `save_pretrained` on the model (never on the class),
and unload / the last delete_adapter remove it.

The Hugging Face Trainer saves through save_pretrained too: `Trainer.save_model(dir)` writes the adapter, and so
does each periodic `checkpoint-N/`. To resume, transformers (5.x) loads a checkpoint's weights into a model that
is not a PeftModel only from `model.safetensors` (with `load_state_dict(strict=False)`), so in a Trainer checkpoint
folder (named `checkpoint-<step>`) lorakit also writes `model.safetensors` holding only the adapter's tensors
under their in-memory keys: `trainer.train(resume_from_checkpoint=...)` then restores exactly the trained adapter
(transformers logs that the base weights were "missing" from it: they are the frozen base, left as they are).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from lorakit.adapter_state import ADAPTER_WATCHERS, adapter_configs
from lorakit.errors import AdapterError, AdapterFileError
from lorakit.io.atomic import replace_files
from lorakit.io.checkpoint import save_adapter
from lorakit.io.keys import to_file_key

ATTR = "save_pretrained"
TRAINER_CHECKPOINT = re.compile(r"checkpoint-\d+")  # transformers' Trainer names its checkpoint folders so
RESUME_WEIGHTS = "model.safetensors"  # the only file the Trainer resumes a non-PEFT model from
# save_pretrained options that do not change an adapter file (sharding, hub token, key prefix, ...)
IGNORED_OPTIONS = ("max_shard_size", "token", "save_peft_format", "save_original_format", "variant", "save_function")


class AdapterSaver:
    """The model's save_pretrained while it has adapters: writes them as PEFT adapters."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                 state_dict: dict[str, torch.Tensor] | None = None, selected_adapters: list[str] | None = None,
                 save_embedding_layers: bool | str = "auto", safe_serialization: bool = True,
                 push_to_hub: bool = False, **options: Any) -> None:
        _check_options(save_embedding_layers, safe_serialization, push_to_hub, options)
        if state_dict is not None:  # the Trainer passes one under FSDP / DeepSpeed: shards gathered for rank 0
            raise AdapterError("save_pretrained(state_dict=...) on a model with lorakit adapters: lorakit saves the "
                               "adapter from the model itself; train sharded models with `lorakit train` "
                               "(training.distributed) or call lorakit.save_adapter on the full model")
        names = list(adapter_configs(self.model)) if selected_adapters is None else list(selected_adapters)
        known = adapter_configs(self.model)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise AdapterError(f"save_pretrained: no adapter named {unknown[0]!r}; the model has {sorted(known)}")
        if not is_main_process:  # distributed training: rank 0 writes
            return
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise AdapterFileError(f"save_pretrained: {directory} is a file; pass a directory")
        for name in names:
            save_adapter(self.model, directory, name)
        if TRAINER_CHECKPOINT.fullmatch(directory.name):
            weights = safetensors_save(resume_tensors(self.model), metadata={"format": "pt"})
            replace_files(directory, {RESUME_WEIGHTS: weights})  # atomic: never a truncated file to resume from


def _check_options(save_embedding_layers: bool | str, safe_serialization: bool, push_to_hub: bool,
                   options: dict[str, Any]) -> None:
    unknown = sorted(k for k in options if k not in IGNORED_OPTIONS)
    if unknown:
        raise AdapterError(f"save_pretrained of a model with lorakit adapters: unsupported option(s) {unknown}")
    if save_embedding_layers is True:
        raise AdapterError("save_pretrained: save_embedding_layers=True is not supported; lorakit writes the "
                           "adapter's tensors (train a resized embedding with modules_to_save to save it)")
    if not safe_serialization:
        raise AdapterError("save_pretrained: lorakit writes adapters as safetensors only (pickle files can run "
                           "code when loaded); leave safe_serialization=True")
    if push_to_hub:
        raise AdapterError("save_pretrained: push_to_hub is not supported for lorakit adapters; save to a folder "
                           "and upload it with huggingface_hub")


def _is_adapter_key(key: str, model: nn.Module) -> bool:
    return any(to_file_key(key, name) is not None for name in adapter_configs(model))


def resume_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes, under the model's own keys: every adapter tensor and every trainable parameter."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {key: tensor.detach().to("cpu").clone()  # clone: safetensors refuses tensors that share memory
            for key, tensor in model.state_dict().items() if key in trainable or _is_adapter_key(key, model)}


# -- install / remove ------------------------------------------------------------------------------------------------
def is_pretrained_model(model: nn.Module) -> bool:
    """A transformers PreTrainedModel (checked without importing transformers: no model of it exists otherwise)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def install(model: nn.Module) -> None:
    if is_pretrained_model(model) and not isinstance(model.__dict__.get(ATTR), AdapterSaver):
        model.__dict__[ATTR] = AdapterSaver(model)


def uninstall(model: nn.Module) -> None:
    if isinstance(model.__dict__.get(ATTR), AdapterSaver):
        del model.__dict__[ATTR]


def _watch(model: nn.Module, has_adapters: bool) -> None:
    """Follow the model's adapters (lorakit.adapter_state calls this after an add and after the last removal)."""
    if has_adapters:
        install(model)
    else:
        uninstall(model)


ADAPTER_WATCHERS.append(_watch)
