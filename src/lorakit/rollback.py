"""Undo a failed load: after `restore_on_error` re-raises, the model is as it was before the load began.

Adding an adapter changes more than the wrapped layers: it freezes parameters (the first adapter) or makes
biases trainable (bias="all"), switches the active adapters, and an init from the base weight (a variant's
`decompose`) rewrites the base weights (the adapter takes the principal part of W). Each of these is recorded
first and put back on failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lorakit.adapter_state import ACTIVE_ATTR, REGISTRY_ATTR, active_adapters, adapter_configs, delete_adapter
from lorakit.config import LoraConfig
from lorakit.errors import LorakitError
from lorakit.inject import base_of, find_targets, lora_layers, trainable_copies
from lorakit.variants.registry import for_init


@contextmanager
def restore_on_error(model: nn.Module, adapter_name: str, config: LoraConfig) -> Iterator[None]:
    flags = [(param, param.requires_grad) for param in model.parameters()]
    active = active_adapters(model)
    had_attrs = {attr: attr in model.__dict__ for attr in (REGISTRY_ATTR, ACTIVE_ATTR)}
    base_weights = _base_weights_changed_by_init(model, config)
    # layers wrapped before the load: a variant may give them new containers (e.g. a magnitude vector)
    layers = [(layer, set(layer._modules), layer.__dict__.get("adapter_containers")) for _, layer in lora_layers(model)]
    try:
        yield
    except BaseException:
        _remove_adapter_everywhere(model, adapter_name, config)
        for layer, children, containers in layers:
            for child in set(layer._modules) - children:
                del layer._modules[child]
            if containers is None:
                layer.__dict__.pop("adapter_containers", None)  # back to the class attribute
            else:
                layer.adapter_containers = containers
        with torch.no_grad():
            for weight, saved in base_weights:
                weight.copy_(saved)
        _restore_active(model, active)
        for param, flag in flags:
            param.requires_grad_(flag)
        for attr, had in had_attrs.items():
            if not had:
                model.__dict__.pop(attr, None)
        raise


def _base_weights_changed_by_init(model: nn.Module, config: LoraConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of the base weights an init from the base weight overwrites (a variant's `decompose`; only then)."""
    owner = for_init(config.init_lora_weights)
    if owner is None or owner.decompose is None:
        return []
    try:
        paths = find_targets(model, config)
    except LorakitError:
        return []  # add_adapter will raise the same error before touching any weight
    weights = [getattr(base_of(model.get_submodule(p)), "weight", None) for p in paths]
    return [(w, w.detach().clone()) for w in weights if isinstance(w, torch.Tensor)]


def _remove_adapter_everywhere(model: nn.Module, adapter_name: str, config: LoraConfig) -> None:
    """delete_adapter, also for an adapter whose add_adapter stopped half-way (some layers have it, no registry)."""
    in_layers = any(adapter_name in layer.r for _, layer in lora_layers(model))
    in_copies = any(adapter_name in w.adapter_names for _, w in trainable_copies(model))
    configs = adapter_configs(model)
    if adapter_name not in configs and not (in_layers or in_copies):
        return
    configs.setdefault(adapter_name, config)  # so delete_adapter finds it
    delete_adapter(model, adapter_name)


def _restore_active(model: nn.Module, active: list[str]) -> None:
    names = [n for n in active if n in adapter_configs(model)]
    for _, layer in lora_layers(model):
        layer.set_active(names)
    for _, wrapper in trainable_copies(model):
        wrapper.set_active(names)
    model.__dict__[ACTIVE_ATTR] = names
