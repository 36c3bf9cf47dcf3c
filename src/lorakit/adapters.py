"""The adapter lifecycle as free functions over a model: add, activate, disable, delete, merge, unload."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lorakit.adapter_state import (  # noqa: F401  (re-exported: the lifecycle's public names live here)
    ACTIVE_ATTR,
    REGISTRY_ATTR,
    active_adapters,
    adapter_configs,
    delete_adapter,
    get_config,
    list_adapters,
    notify,
    require,
    set_adapter,
)
from lorakit.adapter_state import apply_trainable as _apply_trainable
from lorakit.config import LoraConfig
from lorakit.errors import AdapterError, MergeError, TargetError
from lorakit.inject import inject, lora_layers, set_submodule, trainable_copies
from lorakit.layers.base import LoraLayer
from lorakit.layers.saved_module import TrainableCopy
from lorakit.rollback import restore_on_error
from lorakit.variants.registry import variants_of

ADAPTER_NAME = re.compile(r"[A-Za-z0-9_\-]+")
# names a torch ModuleDict / ParameterDict already uses as attributes ("forward", "items", "training", ...)
RESERVED_NAMES = frozenset(dir(nn.ModuleDict())) | frozenset(dir(nn.ParameterDict()))


# -- add / activate / delete -----------------------------------------------------------------------------
def add_adapter(
    model: nn.Module, config: LoraConfig, adapter_name: str = "default", activate: bool = True,
    autocast_adapter_dtype: bool = True,
) -> nn.Module:
    """Inject adapter `adapter_name` in place (the model keeps its class). Returns the model.

    The first adapter freezes the base model. With `activate`, the new adapter becomes the active one.
    Over a 16-bit base the adapter is fp32 and its update is added in fp32 before one rounding, as in PEFT:
    right for training. `autocast_adapter_dtype=False` (PEFT's option of the same name) keeps it in the base's
    dtype instead, for inference: 16-bit products, about 4x faster than fp32 ones on CPU, at 16-bit accuracy."""
    if not isinstance(adapter_name, str) or not ADAPTER_NAME.fullmatch(adapter_name):
        raise AdapterError(f"adapter name {adapter_name!r}: use letters, digits, '_' and '-' only")
    if adapter_name in RESERVED_NAMES:
        raise AdapterError(f"adapter name {adapter_name!r} is reserved (a torch.nn.ModuleDict attribute); pick another")
    configs = adapter_configs(model)
    if adapter_name in configs:
        raise AdapterError(
            f"an adapter named {adapter_name!r} already exists; pick another name or delete_adapter() it first"
        )
    fp32_variant = next((v for v in variants_of(config) if v.keeps_fp32), None)
    if not autocast_adapter_dtype and fp32_variant is not None:
        raise AdapterError(f"autocast_adapter_dtype=False keeps plain LoRA adapters in the base's dtype; "
                           f"{fp32_variant.title} adapters stay in fp32: leave it True")
    first = not configs
    with restore_on_error(model, adapter_name, config):  # a failure half-way leaves the model as it was
        if first:
            for param in model.parameters():
                param.requires_grad_(False)
        inject(model, config, adapter_name)
        if not autocast_adapter_dtype:
            for _, layer in lora_layers(model):
                if adapter_name in layer.r:
                    layer.cast_adapter_to_base_dtype(adapter_name)
        _wrap_modules_to_save(model, config, adapter_name)
        configs[adapter_name] = config
        if activate or first:
            set_adapter(model, adapter_name)
        else:
            _apply_trainable(model)
        _apply_bias_mode(model, config)
    notify(model, True)  # watchers (lorakit.hf_save: save_pretrained now writes the PEFT adapter)
    return model


def _wrap_modules_to_save(model: nn.Module, config: LoraConfig, adapter_name: str) -> None:
    if not config.modules_to_save:
        return
    found = False
    for path, module in list(model.named_modules()):
        if not any(path == n or path.endswith("." + n) for n in config.modules_to_save):
            continue
        if isinstance(module, TrainableCopy):
            module.add_adapter(adapter_name)
            found = True
        elif not _inside_wrapper(model, path):
            wrapper = TrainableCopy(module)
            wrapper.add_adapter(adapter_name)
            set_submodule(model, path, wrapper)
            found = True
    if not found:
        raise TargetError(f"modules_to_save={config.modules_to_save} matched no module in the model")


def _inside_wrapper(model: nn.Module, path: str) -> bool:
    parts = path.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), TrainableCopy) for i in range(1, len(parts)))


def _apply_bias_mode(model: nn.Module, config: LoraConfig) -> None:
    if config.bias == "none" or config.inference_mode:
        return
    if config.bias == "all":
        for name, param in model.named_parameters():
            # not the original head kept beside a modules_to_save copy: it no longer runs, so it gets no gradient
            if name.endswith("bias") and "lora_" not in name and ".original_module." not in name:
                param.requires_grad_(True)
    else:  # lora_only
        for _, layer in lora_layers(model):
            bias = getattr(layer.base_layer, "bias", None)
            if bias is not None:
                bias.requires_grad_(True)


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes the base model's output."""
    layers = [layer for _, layer in lora_layers(model)] + [w for _, w in trainable_copies(model)]
    merged = [p for p, layer in lora_layers(model) if layer.merged_adapters]
    if merged:
        raise AdapterError(
            f"adapters are merged into the base weights (e.g. {merged[0]}); unmerge_adapter(model) first"
        )
    previous = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.disable_adapters = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, previous, strict=True):
            layer.disable_adapters = flag


# -- merge / unload ----------------------------------------------------------------------------------------
def merge_adapter(model: nn.Module, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
    """Add the adapters' updates into the base weights (default: the active adapters). Undo: unmerge_adapter.

    With safe_merge, a merge that would produce NaN/Inf raises before the layer's weight is touched."""
    names = active_adapters(model) if adapter_names is None else list(adapter_names)
    require(model, names)
    users = _parameter_users(model)
    for path, layer in lora_layers(model):  # check all layers first: a refusal leaves every weight untouched
        try:
            layer.check_merge(names, finite=safe_merge)
            _check_not_tied(path, layer, names, users)
        except MergeError as exc:
            raise MergeError(f"layer {path}: {exc}; the model was left unchanged") from None
    done: list[tuple[LoraLayer, int]] = []
    try:
        for _, layer in lora_layers(model):
            done.append((layer, len(layer.merged_adapters)))
            layer.merge(names, safe_merge=safe_merge)
    except Exception:
        for layer, before in reversed(done):  # all or nothing: restore the layers merged by this call
            layer.unmerge(keep=before)
        raise


def _parameter_users(model: nn.Module) -> dict[int, list[str]]:
    users: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        users.setdefault(id(param), []).append(name)
    return users


def _check_not_tied(path: str, layer: LoraLayer, names: list[str], users: dict[int, list[str]]) -> None:
    """A tied weight (e.g. input embeddings = output head) would take the update in both places."""
    if not any(n in layer.r and n not in layer.merged_adapters for n in names):
        return
    others = [u for u in users.get(id(layer.base_weight), []) if not u.startswith(path + ".")]
    if others:
        raise MergeError(
            f"its weight is tied to {others}, so merging would change those modules too; keep the adapter "
            "unmerged, or untie the weights (e.g. tie_word_embeddings=False) before adding the adapter"
        )


def unmerge_adapter(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


def merge_and_unload(model: nn.Module, adapter_names: list[str] | None = None, safe_merge: bool = False) -> nn.Module:
    """Merge, then replace every wrapper by its base layer: a plain model with zero adapter latency."""
    merge_adapter(model, adapter_names, safe_merge)
    return unload(model, _merged_ok=True)


def unload(model: nn.Module, _merged_ok: bool = False) -> nn.Module:
    """Remove every adapter without merging: the base model back (modules_to_save keep the active copy)."""
    for path, layer in list(lora_layers(model)):
        if layer.merged_adapters and not _merged_ok:
            layer.unmerge()
        set_submodule(model, path, layer.base_layer)
    for path, wrapper in list(trainable_copies(model)):
        set_submodule(model, path, wrapper.active_module() if _merged_ok else wrapper.original_module)
    model.__dict__.pop(REGISTRY_ATTR, None)
    model.__dict__.pop(ACTIVE_ATTR, None)
    notify(model, False)  # without adapters the model saves as its class does again
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; packed 4-bit weights count as the parameters they hold."""
    trainable = total = 0
    for param in model.parameters():
        n = _logical_numel(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def _logical_numel(param: torch.Tensor) -> int:
    """Parameters a tensor holds: a packed 4-bit weight (bitsandbytes' Params4bit, from lorakit.quantize or from
    transformers' BitsAndBytesConfig) stores two per byte in a flat uint8 tensor; its quant_state knows the shape."""
    factor = getattr(param, "lorakit_pack_factor", None)
    if factor is not None:
        return param.numel() * factor
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else param.numel()


def print_trainable_parameters(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    percent = 100 * trainable / max(total, 1)
    line = f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}"
    print(line)
    return line
