"""Save / load AdaLoRA adapters in PEFT's AdaLoRA format (peft_type "ADALORA"), loadable by PeftModel.

Files: adapter_config.json (AdaLoraConfig fields; rank_pattern = {"<path>.lora_E": [keep?] * init_r}) and
adapter_model.safetensors with the kept triplets only, as PEFT writes them (lorakit's records in its metadata, as
for every adapter: io/metadata.py):
    base_model.model.<path>.lora_A  (k, in)    base_model.model.<path>.lora_E  (k, 1)
    base_model.model.<path>.lora_B  (out, k)   k = the layer's final rank (sum of its rank_pattern)
modules_to_save tensors use the LoRA key mapping (io/keys.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from lorakit.adapters import get_config
from lorakit.errors import AdapterFileError, LorakitError
from lorakit.inject import default_targets, trainable_copies
from lorakit.io.checkpoint import CONFIG_NAME, load_adapter, lorakit_records, resolve_directory, write_files
from lorakit.io.keys import PREFIX, model_key_candidates, to_file_key
from lorakit.variants.adalora import AdaLoraConfig, adalora_layers

SVD_PARTS = ("lora_A", "lora_E", "lora_B")


def _keep_mask(config: AdaLoraConfig, path: str, rank: int) -> torch.Tensor:
    keep = config.rank_pattern.get(path)
    return torch.ones(rank, dtype=torch.bool) if keep is None else torch.tensor(keep, dtype=torch.bool)


def adalora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """File key -> tensor, pruned to the kept triplets of each layer."""
    config = get_config(model, adapter_name)
    out: dict[str, torch.Tensor] = {}
    for path, layer in adalora_layers(model, adapter_name):
        keep = _keep_mask(config, path, layer.r[adapter_name])
        for part in SVD_PARTS:
            tensor = getattr(layer, part)[adapter_name].detach().cpu()
            out[f"{PREFIX}{path}.{part}"] = (tensor[:, keep] if part == "lora_B" else tensor[keep]).contiguous()
    for key, tensor in model.state_dict().items():
        if ".modules_to_save." in key:
            file_key = to_file_key(key, adapter_name)
            if file_key is not None:
                out[file_key] = tensor.detach().cpu().contiguous()
    return out


def config_for_file(model: nn.Module, config: AdaLoraConfig) -> dict:
    values = dataclasses.asdict(config)
    values["rank_pattern"] = {f"{p}.lora_E": list(map(bool, k)) for p, k in config.rank_pattern.items()} or None
    if values["target_modules"] is None:
        values["target_modules"] = sorted(default_targets(model))
    elif isinstance(values["target_modules"], list):
        values["target_modules"] = sorted(values["target_modules"])
    return values


def save_adalora(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write an AdaLoRA adapter ("default" in `path`, any other name in `path/<name>`). Returns the directory."""
    config = get_config(model, adapter_name)
    if not isinstance(config, AdaLoraConfig):
        raise AdapterFileError(f"adapter {adapter_name!r} is a {config.peft_type} adapter; use lorakit.save_adapter")
    if config.total_step is None:
        raise AdapterFileError("AdaLoRA's total_step is unset (PEFT refuses such a config); set it before saving")
    directory = Path(path) if adapter_name == "default" else Path(path) / adapter_name
    return write_files(directory, config_for_file(model, config), adalora_state_dict(model, adapter_name),
                       lorakit_records(model, adapter_name))


def read_adalora_config(values: dict, adapter_name: str) -> tuple[AdaLoraConfig, dict]:
    """AdaLoraConfig from adapter_config.json values (PEFT's or ours). Returns (config, lorakit_* extras: files
    written before lorakit's records moved to the weights' metadata had them in the config)."""
    if values.get("peft_type") != "ADALORA":
        raise AdapterFileError(f"peft_type={values.get('peft_type')!r}: not an AdaLoRA adapter ('ADALORA')")
    known = set(AdaLoraConfig.field_names())
    extra = {k: v for k, v in values.items() if k.startswith("lorakit_")}
    fields = {k: v for k, v in values.items() if k in known}  # PEFT's bookkeeping keys (peft_version, ...) dropped
    pattern = fields.pop("rank_pattern", None) or {}
    fields["rank_pattern"] = {_layer_path(k, adapter_name): list(map(bool, v)) for k, v in pattern.items()}
    if isinstance(fields.get("target_modules"), list):
        fields["target_modules"] = sorted(fields["target_modules"])
    try:
        return AdaLoraConfig.from_dict(fields), extra
    except LorakitError as exc:
        raise AdapterFileError(f"{CONFIG_NAME}: {exc}") from None


def _layer_path(key: str, adapter_name: str) -> str:
    """PEFT's rank_pattern key "<path>.lora_E" (or "<path>.lora_E.<name>") -> "<path>"."""
    parts = key.split(".")
    if parts[-1] == adapter_name and len(parts) > 1 and parts[-2] == "lora_E":
        parts = parts[:-1]
    return ".".join(parts[:-1]) if parts[-1] == "lora_E" else key


def load_adalora(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 trainable: bool = False, activate: bool = True) -> nn.Module:
    """Load an AdaLoRA adapter (PEFT's or lorakit's) onto `model`; the model is untouched if anything fails.
    lorakit.load_adapter does the same for any file; this one refuses a file that is not AdaLoRA."""
    directory = resolve_directory(Path(path), adapter_name)
    try:
        peft_type = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8")).get("peft_type")
    except (json.JSONDecodeError, OSError, UnicodeDecodeError, AttributeError) as exc:
        raise AdapterFileError(f"{directory / CONFIG_NAME} could not be read as a JSON object ({exc})") from None
    if peft_type != "ADALORA":
        raise AdapterFileError(f"{directory}: peft_type={peft_type!r}: not an AdaLoRA adapter ('ADALORA')")
    return load_adapter(model, path, adapter_name, trainable=trainable, activate=activate)


def _model_key(file_key: str, adapter_name: str, saved: frozenset[str]) -> tuple[str, ...]:
    body = file_key[len(PREFIX):] if file_key.startswith(PREFIX) else file_key
    head, _, last = body.rpartition(".")
    if last in SVD_PARTS:
        return (f"{head}.{last}.{adapter_name}",)
    return model_key_candidates(file_key, adapter_name, saved)


def copy_adalora_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], adapter_name: str,
                         source: str) -> None:
    """Copy an AdaLoRA file's tensors into the adapter load_adapter has just added (shapes checked)."""
    params = dict(model.state_dict(keep_vars=True))
    saved = frozenset(p for p, _ in trainable_copies(model))
    expected = {f"{p}.{part}.{adapter_name}" for p, _ in adalora_layers(model, adapter_name) for part in SVD_PARTS}
    seen: set[str] = set()
    with torch.no_grad():
        for file_key, tensor in tensors.items():
            model_key = next((k for k in _model_key(file_key, adapter_name, saved) if k in params), None)
            if model_key is None:
                raise AdapterFileError(f"{source} has tensor {file_key}, which matches no parameter of this model")
            target = params[model_key]
            if tuple(target.shape) != tuple(tensor.shape):
                raise AdapterFileError(
                    f"{source}: {file_key} is {tuple(tensor.shape)} in the file, the model expects "
                    f"{tuple(target.shape)} (does rank_pattern in {CONFIG_NAME} match the tensors?)"
                )
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
            seen.add(model_key)
    missing = sorted(expected - seen)
    if missing:
        raise AdapterFileError(f"{source} lacks {len(missing)} AdaLoRA tensor(s), e.g. {missing[0]}")
