"""The adapters a model holds: its registry of configs, the active ones, trainability, and deleting one.

Kept apart from adapters.py (add / merge / unload) so that rollback.py, which add_adapter uses to undo a failed
add, can build on it without a cycle. Watchers (`ADAPTER_WATCHERS`) hear when a model gains its first adapter or
loses its last: lorakit.hf_save registers itself there, so save_pretrained writes the adapter.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import AdapterError
from lorakit.inject import lora_layers, set_submodule, trainable_copies

REGISTRY_ATTR = "_lorakit_configs"  # {adapter name: LoraConfig}, kept on the model itself
ACTIVE_ATTR = "_lorakit_active"
# called as watcher(model, has_adapters) after an add (True) and after the last adapter is removed (False)
ADAPTER_WATCHERS: list[Callable[[nn.Module, bool], None]] = []


def notify(model: nn.Module, has_adapters: bool) -> None:
    for watcher in ADAPTER_WATCHERS:
        watcher(model, has_adapters)


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


def require(model: nn.Module, names: list[str]) -> None:
    known = adapter_configs(model)
    for name in names:
        if name not in known:
            raise AdapterError(f"no adapter named {name!r}; the model has {sorted(known) or 'none'}")


def set_adapter(model: nn.Module, adapter_names: str | list[str]) -> None:
    """Make these adapters the active ones (their outputs add); adapter weights of the others are frozen."""
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    require(model, names)
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
    apply_trainable(model)


def apply_trainable(model: nn.Module) -> None:
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


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter everywhere; layers left with no adapter get their base layer back."""
    require(model, [adapter_name])
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
        notify(model, False)  # the model saves as its class does again
