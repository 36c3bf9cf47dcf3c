"""What a run trains (`training.method`): LoRA adapters (the default), every weight (full fine-tuning), or only the
new classification head on the frozen model's features (a linear probe).

The three go through the same trainer, data, loss, schedule and evaluation, so a comparison between them is like
for like. LoRA saves an adapter (PEFT's format). full and probe have no adapter: they save the tensors they trained
as `weights.safetensors` (keys are the model's own state-dict names; full: every tensor, probe: the head), which
`lorakit eval` puts back onto the base the run's train_config.yaml describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from lorakit.errors import ConfigError
from lorakit.hf.classifier import HEAD_NAMES
from lorakit.io.atomic import replace_files

METHODS = ("lora", "full", "probe")
WEIGHTS_FILE = "weights.safetensors"
METHOD_KEY = "lorakit_method"  # in the weights file's metadata: what trained it


def check_method(cfg: Any) -> None:
    """Combinations refused before anything is loaded (cfg: a TrainConfig)."""
    method = cfg.training.method
    if method == "lora":
        return
    if method == "probe" and cfg.model.task != "seq-cls":
        raise ConfigError(f"training.method=probe trains a classification head on frozen features; model.task is "
                          f"{cfg.model.task!r}. Use model.task=seq-cls, or training.method=lora / full")
    if cfg.model.quantization is not None:
        raise ConfigError(f"training.method={method} trains the base weights, which model.quantization="
                          f"{cfg.model.quantization!r} would freeze in 4/8 bits; set model.quantization=null, or "
                          "use training.method=lora (QLoRA)")
    on = sorted(name for name, section in cfg.variants.items() if section is not None)
    if on:
        raise ConfigError(f"training.method={method} has no adapter for the variant section(s) {on}; remove them, "
                          "or use training.method=lora")


def is_head(name: str) -> bool:
    """A parameter of a new classification head (`classifier.weight`, `score.weight`, ...)."""
    return name.split(".", 1)[0] in HEAD_NAMES


def make_trainable(model: nn.Module, method: str) -> nn.Module:
    """full: every parameter trains; probe: only the head. In place; returns the model."""
    if method == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    heads = [p for name, p in model.named_parameters() if is_head(name)]
    if not heads:
        raise ConfigError(f"training.method=probe found no classification head ({' / '.join(HEAD_NAMES)}) on "
                          f"{type(model).__name__}; use model.task=seq-cls")
    for param in heads:
        param.requires_grad_(True)
    return model


def trained_state(model: nn.Module, method: str) -> dict[str, torch.Tensor]:
    """What a full / probe run saves: every state-dict tensor (full), or the head's (probe). A tensor tied to an
    earlier one (an LM head sharing the embedding) is saved once, under its first name: loading it sets both."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in model.state_dict().items():
        if method != "full" and not is_head(key):
            continue
        where = (value.untyped_storage().data_ptr(), value.storage_offset()) if value.numel() else (id(value), 0)
        if where in seen:
            continue
        seen.add(where)
        out[key] = value.detach().to("cpu").contiguous()
    return out


def save_weights(model: nn.Module, directory: Path, method: str) -> None:
    """weights.safetensors in `directory`, replaced atomically (an older file stays until the new one is whole)."""
    state = trained_state(model, method)
    shapes = {k: list(v.shape) for k, v in state.items()}
    data = save(state, metadata={METHOD_KEY: method, "lorakit_shapes": json.dumps(shapes)})
    Path(directory).mkdir(parents=True, exist_ok=True)
    replace_files(Path(directory), {WEIGHTS_FILE: data})


def load_weights(model: nn.Module, directory: Path) -> str:
    """Put a full / probe run's weights back onto its base; returns the method. Every key must match."""
    path = Path(directory) / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as handle:
        method = (handle.metadata() or {}).get(METHOD_KEY)
        names = handle.keys()  # a safe_open handle is not iterable
        tensors = {key: handle.get_tensor(key) for key in names}
    if method not in ("full", "probe"):
        raise ConfigError(f"{path} was not written by a lorakit full / probe run (no {METHOD_KEY} in its metadata)")
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    missing = sorted(set(trained_state(model, method)) - set(tensors))
    wrong = [k for k in tensors if k in state and tuple(state[k].shape) != tuple(tensors[k].shape)]
    if unknown or missing or wrong:
        detail = (f"unexpected {unknown[:3]}" if unknown else f"missing {missing[:3]}" if missing else
                  f"{wrong[0]} is {tuple(tensors[wrong[0]].shape)}, the model has {tuple(state[wrong[0]].shape)}")
        raise ConfigError(f"{path} does not fit this base model ({detail}); evaluate it with the run's own "
                          "train_config.yaml (same model.path and data labels)")
    with torch.no_grad():
        for key, tensor in tensors.items():
            state[key].copy_(tensor.to(dtype=state[key].dtype))
    return method


def saved_bytes(directory: Path, method: str, adapter_name: str = "default") -> int:
    """Bytes on disk of what the run saved: the adapter's files (lora), or weights.safetensors."""
    directory = Path(directory)
    if method != "lora":
        path = directory / WEIGHTS_FILE
        return path.stat().st_size if path.is_file() else 0
    folder = directory if adapter_name == "default" else directory / adapter_name
    return sum(f.stat().st_size for f in folder.glob("adapter_*") if f.is_file())
