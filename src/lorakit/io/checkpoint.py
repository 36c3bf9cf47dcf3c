"""save_adapter / load_adapter in PEFT's format: adapter_config.json + adapter_model.safetensors.

adapter_config.json holds PEFT's fields only; lorakit's records (base-model fingerprint, version, checksums) are in
the weights' safetensors metadata, where PEFT and transformers do not look (io/metadata.py). Saves are atomic
(io/atomic.py: both files or neither; the config is renamed last). Loads check the files before the model is
touched, and undo everything if anything fails after that.
A variant with its own file form (lorakit.variants.registry: read_config / save / copy_tensors) reads and writes
through its registry entry; everything else here is plain LoRA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from torch import nn

from lorakit.adapters import ADAPTER_NAME, adapter_configs, add_adapter, get_config
from lorakit.config import LoraConfig
from lorakit.errors import AdapterError, AdapterFileError, ConfigError, LorakitError, TargetError
from lorakit.hf.hub import local_adapter
from lorakit.inject import default_targets, lora_layers, trainable_copies
from lorakit.io import wrapped
from lorakit.io.adapter_file import AdapterFile
from lorakit.io.atomic import recover_backup, replace_files
from lorakit.io.fingerprint import check_fingerprint, fingerprint
from lorakit.io.keys import base_bias_file_key, layer_path_of, model_key_candidates, tensor_role, to_file_key
from lorakit.io.metadata import checked_weights, encode_weights, legacy_weights
from lorakit.rollback import restore_on_error
from lorakit.variants.registry import config_flags, for_peft_type, with_hook
from lorakit.version import __version__

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model under torch.compile / DataParallel wrappers: the one holding the adapters and their keys."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


# -- saving ----------------------------------------------------------------------------------------------------
def adapter_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under their file keys (what save_adapter writes; for PiSSA / OLoRA it writes their
    rank-2r fold instead, variants/pissa.py)."""
    model = unwrap_model(model)
    config = get_config(model, adapter_name)
    out: dict[str, torch.Tensor] = {}
    lora_only_biases = {f"{p}.base_layer.bias" for p, layer in lora_layers(model) if adapter_name in layer.r}
    for key, tensor in model.state_dict().items():
        file_key = to_file_key(key, adapter_name)
        if file_key is None and _is_trained_bias(key, config.bias, lora_only_biases):
            file_key = base_bias_file_key(key)
        if file_key is not None:
            out[file_key] = tensor.detach().to("cpu").contiguous()
    _check_nothing_left_out(model, adapter_name)
    return out


def _is_trained_bias(key: str, mode: str, lora_only_biases: set[str]) -> bool:
    if mode == "all":
        return key.endswith(".bias") and "lora_" not in key and ".modules_to_save." not in key
    return mode == "lora_only" and key in lora_only_biases


def _check_nothing_left_out(model: nn.Module, adapter_name: str) -> None:
    """Every tensor a layer keeps for this adapter must have a file key: a silently dropped one is a broken save."""
    for path, layer in lora_layers(model):
        for attr in layer.adapter_containers:
            container = getattr(layer, attr, None)
            if container is None or adapter_name not in container:
                continue
            item = container[adapter_name]
            keys = [""] if isinstance(item, torch.Tensor) else [f".{k}" for k in item.state_dict()]
            for suffix in keys:
                model_key = f"{path}.{attr}.{adapter_name}{suffix}"
                if to_file_key(model_key, adapter_name) is None:
                    raise AdapterFileError(
                        f"cannot save adapter {adapter_name!r}: tensor {model_key} has no key in PEFT's file format "
                        "(a layer type that keeps adapter tensors outside lora_A / lora_B / lora_embedding_A/B / "
                        "lora_magnitude_vector)"
                    )


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 pissa_raw: bool = False) -> Path:
    """Write one adapter. "default" goes in `path`; any other name in `path/<name>` (PEFT's layout).

    A PiSSA / OLoRA adapter (init_lora_weights "pissa", "pissa_niter_<k>", "olora") is written as plain LoRA of
    twice the rank, exact on the ORIGINAL base, so every loader sees the trained model. `pissa_raw=True` writes the
    trained (A, B) as they are instead: that file only means the trained model on a base decomposed again at load
    (lorakit and PEFT do so; servers such as `lorakit serve` do not); its config keeps the init and its metadata
    says lorakit_residual_init form "raw". Ignored for other adapters.

    Returns the directory written. A crash mid-save leaves the previous adapter files intact."""
    model = unwrap_model(model)
    config = get_config(model, adapter_name)
    variant = with_hook(config, "save")  # a variant with its own file form (e.g. SVD triplets, a rank-2r fold)
    if variant is not None:
        return variant.save(model, path, adapter_name, pissa_raw)
    return write_adapter_files(model, path, adapter_name, config, adapter_state_dict(model, adapter_name))


def write_adapter_files(model: nn.Module, path: str | os.PathLike, adapter_name: str, config: LoraConfig,
                        tensors: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> Path:
    """Write `tensors` (file keys) with `config` as an adapter directory, atomically; `extra`: more lorakit records
    for the weights' metadata (keys starting with "lorakit_")."""
    directory = Path(path) if adapter_name == "default" else Path(path) / adapter_name
    records = dict(extra or {})
    if wrapped.base_path(model):  # a wrapper (mean-pooling classifier): the files describe the model it wraps
        model, config, tensors, records = wrapped.for_base_model(model, directory, config, tensors, records)
    return write_files(directory, _config_for_file(model, config), tensors,
                       {**lorakit_records(model, adapter_name), **records})


def lorakit_records(model: nn.Module, adapter_name: str) -> dict[str, Any]:
    """What every lorakit adapter file records about itself (in the weights' metadata)."""
    return {"lorakit_version": __version__, "lorakit_fingerprint": fingerprint(model, adapter_name)}


def write_files(directory: Path, config_values: dict[str, Any], tensors: dict[str, torch.Tensor],
                records: dict[str, Any]) -> Path:
    """adapter_config.json (`config_values`) and adapter_model.safetensors (`tensors`, `records` in the metadata)
    written into `directory` atomically; the config is renamed in last."""
    if directory.exists() and not directory.is_dir():
        raise AdapterFileError(f"cannot save adapter to {directory}: a file of that name exists")
    config_bytes = (json.dumps(config_values, indent=2, sort_keys=True) + "\n").encode()
    weights = encode_weights(tensors, records, config_bytes)
    directory.mkdir(parents=True, exist_ok=True)
    replace_files(directory, {WEIGHTS_NAME: weights, CONFIG_NAME: config_bytes})  # the config last: it commits
    return directory


def _config_for_file(model: nn.Module, config: LoraConfig) -> dict[str, Any]:
    values = config.to_dict()
    if values["target_modules"] is None:  # record what the default resolved to, so every tool agrees
        values["target_modules"] = sorted(default_targets(model))
    if values["base_model_name_or_path"] is None:
        values["base_model_name_or_path"] = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return values


# -- reading ----------------------------------------------------------------------------------------------------
def read_adapter(path: str | os.PathLike, adapter_name: str = "default", allow_pickle: bool = False) -> AdapterFile:
    """Read and validate an adapter directory without a model: an AdapterFile (io/adapter_file.py), the NamedTuple
    (config, lorakit records, tensors, directory) with the tensors also grouped per layer.

    The records (lorakit_fingerprint, lorakit_version, lorakit_weights_sha256, a variant's) come from the weights'
    metadata, or from adapter_config.json in files written before that layout.
    A file whose peft_type a registered variant owns is read by that variant (its config class, its tensor keys)."""
    directory = resolve_directory(local_adapter(path), adapter_name)  # a Hub id: its snapshot in the HF cache
    config_path = directory / CONFIG_NAME
    try:
        config_bytes = config_path.read_bytes()
        raw = json.loads(config_bytes.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterFileError(f"{config_path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise AdapterFileError(f"{config_path} could not be read as a JSON text file ({exc})") from None
    if not isinstance(raw, dict):
        raise AdapterFileError(f"{config_path} should hold a JSON object, found {type(raw).__name__}")
    try:
        variant = for_peft_type(raw.get("peft_type"))
        if variant is not None and variant.read_config is not None:
            config, extra = variant.read_config(raw, adapter_name)
        else:
            config, extra = LoraConfig.from_peft_dict(raw)
    except LorakitError as exc:
        raise AdapterFileError(f"{config_path}: {exc}") from None
    tensors, records = _read_weights(directory, allow_pickle, config_bytes, extra.get("lorakit_weights_sha256"))
    return AdapterFile(config, {**extra, **records}, tensors, directory)


def resolve_directory(path: Path, adapter_name: str) -> Path:
    """`path/<name>` (where save_adapter puts a non-default adapter) if it holds an adapter, else `path`."""
    path = path.expanduser()
    candidates = [path, path / adapter_name] if adapter_name == "default" else [path / adapter_name, path]
    for directory in candidates:
        if (directory / CONFIG_NAME).is_file():
            return directory
    if path.is_file():
        raise AdapterFileError(f"{path} is a file; pass the adapter's directory ({path.parent})")
    if not path.exists():
        raise AdapterFileError(f"adapter directory {path} does not exist")
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    raise AdapterFileError(f"no {CONFIG_NAME} in {path} (nor in {path / adapter_name}); found {found[:20]}")


def _read_weights(directory: Path, allow_pickle: bool, config_bytes: bytes,
                  legacy_sha256: str | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, records of the weights' metadata); verified against the checksums wherever the file has them."""
    weights_path = directory / WEIGHTS_NAME
    if weights_path.is_file() or (legacy_sha256 and recover_backup(weights_path, legacy_sha256)):
        if legacy_sha256:  # an old-layout file: the config holds the sha256 of the whole weights file
            data = legacy_weights(weights_path, legacy_sha256)
            records: dict[str, Any] = {}
        else:
            data, records = checked_weights(weights_path, config_bytes)
        try:
            return safetensors_load(data), records
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
            tensors = torch.load(pickle_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterFileError(f"{pickle_path} could not be read safely ({exc})") from None
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise AdapterFileError(f"{pickle_path} does not hold a dict of tensors")
        return tensors, {}
    raise AdapterFileError(f"no adapter weights in {directory}: expected {WEIGHTS_NAME}")


# -- loading ----------------------------------------------------------------------------------------------------
def load_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    adapter_name: str = "default",
    trainable: bool = False,
    activate: bool = True,
    allow_pickle: bool = False,
    autocast_adapter_dtype: bool = True,
) -> nn.Module:
    """Load an adapter (lorakit's or PEFT's) onto `model`, injecting its layers. Returns the model.

    A non-default name is looked up in `path/<name>` first (save_adapter's layout), then in `path`.
    `autocast_adapter_dtype=False` keeps the adapter in a 16-bit base's dtype (see add_adapter).
    Files are checked before the model is touched; if anything fails, the model is left exactly as it was."""
    if not isinstance(adapter_name, str) or not ADAPTER_NAME.fullmatch(adapter_name):  # it also names a folder
        raise AdapterError(f"adapter name {adapter_name!r}: use letters, digits, '_' and '-' only")
    inner = unwrap_model(model)
    config, extra, tensors, directory = read_adapter(path, adapter_name, allow_pickle)
    variant = with_hook(config, "copy_tensors")  # a variant whose tensors have their own keys
    copy_tensors = copy_into_model if variant is None else variant.copy_tensors
    source = f"adapter {directory}"
    if adapter_name in adapter_configs(inner):
        raise AdapterFileError(f"the model already has an adapter named {adapter_name!r}; load it under another name")
    fingerprinted = inner
    if wrapped.base_path(inner) and wrapped.in_base_layout(inner, tensors):  # see io/wrapped.py
        config, tensors = wrapped.for_wrapper(inner, config, tensors, extra, directory)
        fingerprinted = inner.get_submodule(wrapped.base_path(inner))
    if extra.get("lorakit_fingerprint"):
        check_fingerprint(extra["lorakit_fingerprint"], fingerprinted, source)
    config.inference_mode = not trainable
    with restore_on_error(inner, adapter_name, config):
        try:
            add_adapter(inner, config, adapter_name, activate=activate, autocast_adapter_dtype=autocast_adapter_dtype)
        except (ConfigError, TargetError) as exc:  # the file's config does not fit this model
            raise AdapterFileError(f"{source}: {exc}") from None
        copy_tensors(inner, tensors, adapter_name, source)
    return model


def copy_into_model(model: nn.Module, tensors: dict[str, torch.Tensor], adapter_name: str, source: str) -> None:
    saved_paths = frozenset(p for p, _ in trainable_copies(model))
    bias_mode = get_config(model, adapter_name).bias
    params = dict(model.state_dict(keep_vars=True))
    position = {key: i for i, key in enumerate(params)}
    expected = {k for k in params if to_file_key(k, adapter_name) is not None}
    matched: dict[str, str | None] = {}
    for file_key in tensors:
        candidates = model_key_candidates(file_key, adapter_name, saved_paths)
        matched[file_key] = next((k for k in candidates if k in params), None)
    # model order, so an error names the earliest layer that does not fit; unknown keys last
    order = sorted(tensors, key=lambda k: (matched[k] is None, position.get(matched[k], 0), k))
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for file_key in order:
        tensor, model_key = tensors[file_key], matched[file_key]
        if model_key is None:
            raise AdapterFileError(
                f"{source} has tensor {file_key}, which matches no parameter of this model "
                f"(layer {layer_path_of(file_key)!r}); was it saved from another base model, or with a setting "
                f"(target_modules, {', '.join(config_flags())}, ...) that its adapter_config.json does not record?"
            )
        _check_may_change(model_key, file_key, adapter_name, bias_mode, source)
        target = params[model_key]
        if tuple(target.shape) != tuple(tensor.shape):
            raise AdapterFileError(_shape_message(source, file_key, tensor, target))
        if target.is_floating_point() and not tensor.is_floating_point():
            raise AdapterFileError(f"{source}: tensor {file_key} has dtype {tensor.dtype}, expected floating point")
        pairs.append((target, tensor))
    missing = sorted(expected - {k for k in matched.values() if k is not None}, key=position.__getitem__)
    if missing:
        names = [to_file_key(k, adapter_name) for k in missing]
        raise AdapterFileError(
            f"{source} lacks {len(missing)} tensor(s) that its adapter_config.json asks for, e.g. "
            f"{', '.join(map(str, names[:3]))}"
        )
    with torch.no_grad():
        for target, tensor in pairs:
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))


# layer names whose base weight PEFT saves beside the adapter (save_embedding_layers="auto" when they are targeted)
SAVED_EMBEDDING_NAMES = ("embed_tokens", "lm_head")


def _check_may_change(model_key: str, file_key: str, adapter_name: str, bias_mode: str, source: str) -> None:
    """A file tensor that lands on a base parameter (not an adapter tensor, not a modules_to_save copy) is allowed
    only for the biases the config trains; anything else would silently overwrite the base model."""
    if to_file_key(model_key, adapter_name) is not None:
        return  # an adapter tensor, or a modules_to_save copy
    if model_key.endswith(".bias") and bias_mode != "none":
        return
    layer, _, param = model_key.rpartition(".base_layer.")
    if param == "weight" and layer.rpartition(".")[2] in SAVED_EMBEDDING_NAMES:
        return  # PEFT's save_embedding_layers: the (possibly resized) embedding of an adapted embed_tokens / lm_head
    what = "a bias, but the adapter's config has bias='none'" if model_key.endswith(".bias") else \
        "a base model weight, and the adapter's config names no modules_to_save that holds it"
    raise AdapterFileError(f"{source} has tensor {file_key}, which is {what}; loading it would overwrite the base "
                           "model (add the module to modules_to_save, or remove the tensor from the file)")


def _shape_message(source: str, file_key: str, tensor: torch.Tensor, target: torch.Tensor) -> str:
    """E.g. 'adapter layer model.layers.0.self_attn.q_proj: lora_A is (8, 64) in the file, the model's layer takes
    32 inputs'."""
    layer, role = layer_path_of(file_key), tensor_role(file_key)
    got, want = tuple(tensor.shape), tuple(target.shape)
    # A: (r, in, *kernel) / (r, vocab); B: (out, r, *1) / (dim, r)
    axes = {"lora_A": (0, 1), "lora_embedding_A": (0, 1), "lora_B": (1, 0), "lora_embedding_B": (1, 0)}
    rank_axis, io_axis = axes.get(role, (None, None))
    if len(got) != len(want) or not got:
        detail = f"the model expects {want}"
    elif io_axis is not None and got[io_axis] != want[io_axis]:
        detail = {
            "lora_A": f"the model's layer takes {want[1]} inputs",
            "lora_embedding_A": f"the model's embedding has {want[1]} rows (its vocab size)",
            "lora_B": f"the model's layer has {want[0]} outputs",
            "lora_embedding_B": f"the model's embedding has dimension {want[0]}",
        }[role]
    elif rank_axis is not None and got[rank_axis] != want[rank_axis]:
        detail = f"rank {got[rank_axis]} in the file, but adapter_config.json gives this layer r={want[rank_axis]}"
    elif role in ("lora_B.bias", "lora_magnitude_vector"):
        detail = f"the model's layer has {want[0]} outputs"
    else:
        detail = f"the model expects {want}"
    return f"{source}: adapter layer {layer}: {role} is {got} in the file, {detail}"
