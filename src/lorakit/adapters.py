"""The adapter lifecycle as free functions over a model: add, activate, disable, delete, merge, unload."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import AdapterError, MergeError, TargetError
from lorakit.inject import inject, lora_layers, set_submodule, trainable_copies
from lorakit.layers.base import LoraLayer
from lorakit.layers.saved_module import TrainableCopy

REGISTRY_ATTR = "_lorakit_configs"  # {adapter name: LoraConfig}, kept on the model itself
ACTIVE_ATTR = "_lorakit_active"
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_\-]+")
# names a torch ModuleDict / ParameterDict already uses as attributes ("forward", "items", "training", ...)
RESERVED_NAMES = frozenset(dir(nn.ModuleDict())) | frozenset(dir(nn.ParameterDict()))


# -- registry --------------------------------------------------------------------------------------------
def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    return model.__dict__.setdefault(REGISTRY_ATTR, {})


def list_adapters(model: nn.Module) -> list[str]:
    return list(adapter_configs(model))


def active_adapters(model: nn.Module) -> list[str]:
    return list(model.__dict__.get(ACTIVE_ATTR, []))


def get_config(model: nn.Module, adapter_name: str = "default") -> LoraConfig:
    configs = adapter_configs(model)
    if adapter_name not in configs:
        raise AdapterError(f"no adapter named {adapter_name!r}; the model has {sorted(configs) or 'none'}")
    return configs[adapter_name]


def _require(model: nn.Module, names: list[str]) -> None:
    known = adapter_configs(model)
    for name in names:
        if name not in known:
            raise AdapterError(f"no adapter named {name!r}; the model has {sorted(known) or 'none'}")


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
    if not autocast_adapter_dtype and (config.use_dora or config.peft_type != "LORA"):
        raise AdapterError(f"autocast_adapter_dtype=False keeps plain LoRA adapters in the base's dtype; "
                           f"{'DoRA' if config.use_dora else config.peft_type} adapters stay in fp32: leave it True")
    from lorakit.rollback import restore_on_error  # imported here: rollback builds on this module

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
    from lorakit import hf_save  # imported here: it saves through io/, which builds on this module

    hf_save.install(model)  # save_pretrained now writes the PEFT adapter
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


def set_adapter(model: nn.Module, adapter_names: str | list[str]) -> None:
    """Make these adapters the active ones (their outputs add); adapter weights of the others are frozen."""
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    _require(model, names)
    for path, layer in lora_layers(model):
        stale = [n for n in layer.merged_adapters if n not in names]
        if stale:
            raise AdapterError(
                f"adapter {stale[0]!r} is merged into the base weights (layer {path}); call "
                "unmerge_adapter(model) before changing the active adapters"
            )
        layer.set_active(names)
    for _, wrapper in trainable_copies(model):
        wrapper.set_active(names)
    model.__dict__[ACTIVE_ATTR] = names
    _apply_trainable(model)


def _apply_trainable(model: nn.Module) -> None:
    """Adapter tensors train when their adapter is active and not in inference mode."""
    configs = adapter_configs(model)
    active = set(active_adapters(model))
    for _, layer in lora_layers(model):
        for attr in layer.adapter_containers:
            container = getattr(layer, attr, None) or {}
            for name in container:
                trainable = name in active and not configs[name].inference_mode
                container_item = container[name]
                params = [container_item] if isinstance(container_item, nn.Parameter) else container_item.parameters()
                for param in params:
                    param.requires_grad_(trainable)
    for _, wrapper in trainable_copies(model):
        for name, copy in wrapper.modules_to_save.items():
            copy.requires_grad_(name in active and not configs[name].inference_mode)


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


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter everywhere; layers left with no adapter get their base layer back."""
    _require(model, [adapter_name])
    for path, layer in list(lora_layers(model)):
        if adapter_name in layer.r:
            layer.delete_adapter(adapter_name)
        if not layer.adapter_names:
            set_submodule(model, path, layer.base_layer)
    for path, wrapper in list(trainable_copies(model)):
        wrapper.delete_adapter(adapter_name)
        if not wrapper.adapter_names:
            set_submodule(model, path, wrapper.original_module)
    del adapter_configs(model)[adapter_name]
    model.__dict__[ACTIVE_ATTR] = [a for a in active_adapters(model) if a != adapter_name]
    if not adapter_configs(model):
        _forget_save_pretrained(model)


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
    _require(model, names)
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
    _forget_save_pretrained(model)
    return model


def _forget_save_pretrained(model: nn.Module) -> None:
    """Without adapters the model saves as its class does again (see lorakit.hf_save)."""
    from lorakit import hf_save  # imported here, as in add_adapter

    hf_save.uninstall(model)


# -- parameter counts --------------------------------------------------------------------------------------
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
