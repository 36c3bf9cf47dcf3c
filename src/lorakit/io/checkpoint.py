"""save_adapter / load_adapter in PEFT's format: adapter_config.json + adapter_model.safetensors.

Saves are atomic (temporary files, then rename; the config, written last, carries the weights' checksum),
loads check everything before the model is touched and roll back on any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from lorakit import __version__
from lorakit.adapters import adapter_configs, add_adapter, delete_adapter, get_config
from lorakit.config import LoraConfig
from lorakit.errors import AdapterFileError, LorakitError
from lorakit.inject import default_targets, lora_layers, trainable_copies
from lorakit.io.fingerprint import check_fingerprint, fingerprint
from lorakit.io.keys import layer_path_of, to_file_key, to_model_key

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"


# -- saving ----------------------------------------------------------------------------------------------------
def adapter_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under their file keys (what save_adapter writes)."""
    config = get_config(model, adapter_name)
    out: dict[str, torch.Tensor] = {}
    lora_only_biases = {f"{p}.base_layer.bias" for p, layer in lora_layers(model) if adapter_name in layer.r}
    for key, tensor in model.state_dict().items():
        file_key = to_file_key(key, adapter_name)
        if file_key is None and _is_trained_bias(key, config.bias, lora_only_biases):
            file_key = "base_model.model." + key
        if file_key is not None:
            out[file_key] = tensor.detach().to("cpu").contiguous()
    return out


def _is_trained_bias(key: str, mode: str, lora_only_biases: set[str]) -> bool:
    if mode == "all":
        return key.endswith(".bias") and "lora_" not in key and ".modules_to_save." not in key
    return mode == "lora_only" and key in lora_only_biases


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write one adapter. "default" goes in `path`; any other name in `path/<name>` (PEFT's layout).

    Returns the directory written. A crash mid-save leaves the previous adapter files intact."""
    config = get_config(model, adapter_name)
    directory = Path(path) if adapter_name == "default" else Path(path) / adapter_name
    if directory.exists() and not directory.is_dir():
        raise AdapterFileError(f"cannot save adapter to {directory}: a file of that name exists")
    weights = safetensors_save(adapter_state_dict(model, adapter_name), metadata={"format": "pt"})
    config_dict = _config_for_file(model, config, adapter_name)
    config_dict["lorakit_weights_sha256"] = hashlib.sha256(weights).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / WEIGHTS_NAME, weights)
    _atomic_write(directory / CONFIG_NAME, (json.dumps(config_dict, indent=2, sort_keys=True) + "\n").encode())
    return directory


def _config_for_file(model: nn.Module, config: LoraConfig, adapter_name: str) -> dict[str, Any]:
    values = config.to_dict()
    if values["target_modules"] is None:  # record what the default resolved to, so every tool agrees
        values["target_modules"] = sorted(default_targets(model))
    if values["base_model_name_or_path"] is None:
        values["base_model_name_or_path"] = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    values["lorakit_version"] = __version__
    values["lorakit_fingerprint"] = fingerprint(model, adapter_name)
    return values


def _atomic_write(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- loading ----------------------------------------------------------------------------------------------------
def read_adapter(path: str | os.PathLike, adapter_name: str = "default", allow_pickle: bool = False):
    """Read and validate an adapter directory without a model: (LoraConfig, extra config keys, tensors, dir)."""
    directory = resolve_directory(Path(path), adapter_name)
    config_path = directory / CONFIG_NAME
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterFileError(f"{config_path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise AdapterFileError(f"{config_path} should hold a JSON object, found {type(raw).__name__}")
    try:
        config, extra = LoraConfig.from_peft_dict(raw)
    except LorakitError as exc:
        raise AdapterFileError(f"{config_path}: {exc}") from None
    tensors = _read_weights(directory, allow_pickle, extra.get("lorakit_weights_sha256"))
    return config, extra, tensors, directory


def resolve_directory(path: Path, adapter_name: str) -> Path:
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / adapter_name / CONFIG_NAME).is_file():
        return path / adapter_name
    if not path.exists():
        raise AdapterFileError(f"adapter directory {path} does not exist")
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    raise AdapterFileError(f"no {CONFIG_NAME} in {path} (nor in {path / adapter_name}); found {found[:20]}")


def _read_weights(directory: Path, allow_pickle: bool, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    weights_path = directory / WEIGHTS_NAME
    if weights_path.is_file():
        data = weights_path.read_bytes()
        if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise AdapterFileError(
                f"{weights_path} does not match the checksum in its {CONFIG_NAME} (edited file, or files from "
                "two different saves); save the adapter again"
            )
        try:
            return safetensors_load(data)
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
            raise AdapterFileError(f"{weights_path} is corrupt or truncated ({exc})") from None
    pickle_path = directory / PICKLE_WEIGHTS_NAME
    if pickle_path.is_file():
        if not allow_pickle:
            raise AdapterFileError(
                f"{pickle_path} is a pickle file, which can run code when loaded; lorakit reads safetensors only. "
                "If you trust it, pass allow_pickle=True (it is then read with torch.load(weights_only=True))"
            )
        try:
            return torch.load(pickle_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterFileError(f"{pickle_path} could not be read safely ({exc})") from None
    raise AdapterFileError(f"no adapter weights in {directory}: expected {WEIGHTS_NAME}")


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    adapter_name: str = "default",
    trainable: bool = False,
    activate: bool = True,
    allow_pickle: bool = False,
) -> nn.Module:
    """Load an adapter (lorakit's or PEFT's) onto `model`, injecting its layers. Returns the model.

    Everything is checked before the model is touched; on a mismatch the model is left as it was."""
    config, extra, tensors, directory = read_adapter(path, adapter_name, allow_pickle)
    source = f"adapter {directory}"
    if adapter_name in adapter_configs(model):
        raise AdapterFileError(f"the model already has an adapter named {adapter_name!r}; load it under another name")
    if extra.get("lorakit_fingerprint"):
        check_fingerprint(extra["lorakit_fingerprint"], model, source)
    config.inference_mode = not trainable
    add_adapter(model, config, adapter_name, activate=activate)
    try:
        _copy_into_model(model, tensors, adapter_name, source)
    except BaseException:
        delete_adapter(model, adapter_name)  # roll back the injection
        raise
    return model


def _copy_into_model(model: nn.Module, tensors: dict[str, torch.Tensor], adapter_name: str, source: str) -> None:
    saved_paths = frozenset(p for p, _ in trainable_copies(model))
    params = dict(model.state_dict(keep_vars=True))
    expected = {k for k in params if to_file_key(k, adapter_name) is not None}
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[str] = set()
    for file_key, tensor in tensors.items():
        model_key = to_model_key(file_key, adapter_name, saved_paths)
        if model_key not in params:
            raise AdapterFileError(
                f"{source} has tensor {file_key}, which matches no parameter of this model "
                f"(layer {layer_path_of(file_key)!r}); was it saved from another base model?"
            )
        target = params[model_key]
        if tuple(target.shape) != tuple(tensor.shape):
            raise AdapterFileError(_shape_message(source, file_key, tensor, target))
        pairs.append((target, tensor))
        seen.add(model_key)
    missing = sorted(expected - seen)
    if missing:
        raise AdapterFileError(f"{source} lacks {len(missing)} adapter tensor(s), e.g. {missing[0]}")
    with torch.no_grad():
        for target, tensor in pairs:
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))


def _shape_message(source: str, file_key: str, tensor: torch.Tensor, target: torch.Tensor) -> str:
    layer = layer_path_of(file_key)
    name = file_key.rsplit(".", 2)[-2] if file_key.endswith(".weight") else file_key.rsplit(".", 1)[-1]
    got, want = tuple(tensor.shape), tuple(target.shape)
    if name in ("lora_A", "lora_embedding_A") and len(got) >= 2 and got[1:] != want[1:]:
        detail = f"the model's layer takes {want[1]} inputs"
    elif name in ("lora_B", "lora_embedding_B") and got[0] != want[0]:
        detail = f"the model's layer has {want[0]} outputs"
    else:
        detail = f"the model expects {want}"
    return f"{source}: adapter layer {layer}: {name} is {got} in the file, {detail}"
