"""TRL's trainers on a model with lorakit adapters (tests/hf/test_trl.py).

SFTTrainer needs nothing from here: it trains whatever parameters require gradients, and its `save_model` goes
through the model's `save_pretrained`, which writes a PEFT adapter (lorakit.hf_save).

DPOTrainer compares the policy with a frozen reference model. For a PeftModel it runs the policy with the adapters
disabled; for any other model, given no `ref_model`, it loads a second copy of the base from
`model.config.name_or_path`. `reference_model(model)` gives it the base instead, without copying any weight: a
new object tree that shares every module holding tensors with the policy, in which each LoRA wrapper is replaced by
the base layer it wraps (and each `modules_to_save` wrapper by the original module). Only the modules on the way
from the root to a wrapper are new objects (a decoder block, its attention, ...), and they hold no tensors of their
own that are not the policy's. So

    trainer = DPOTrainer(model=policy, ref_model=lorakit.integrations.trl.reference_model(policy), ...)

keeps one copy of the base in memory, and the reference always computes what the base model computes.

Limits: the reference is the base, which equals the policy at the start of training only for a fresh adapter
(lora_B = 0, the default); to start DPO from a trained adapter and keep it as the reference, pass no `ref_model`
and set `precompute_ref_log_probs=True` (the policy's log-probs are then computed once, before training). One
process on one device: DeepSpeed and FSDP shard or wrap the reference model separately.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import nn

from lorakit.adapter_state import ACTIVE_ATTR, REGISTRY_ATTR, adapter_configs
from lorakit.errors import AdapterError
from lorakit.hf_save import uninstall as uninstall_adapter_saver
from lorakit.inject import lora_layers, trainable_copies
from lorakit.variants.registry import variants_of


def reference_model(model: nn.Module) -> nn.Module:
    """The base model under `model`'s lorakit adapters, sharing all of its weights (no copy): DPO's reference."""
    # each wrapper -> what the reference runs in its place
    found = {path: (layer, layer.base_layer) for path, layer in lora_layers(model)}
    found.update({path: (wrapper, wrapper.original_module) for path, wrapper in trainable_copies(model)})
    if not found:
        raise AdapterError("reference_model: the model has no lorakit adapters; add one with lorakit.add_adapter "
                           "first (a model without adapters is its own reference: pass a copy as ref_model)")
    _check_base_is_original(model)
    wrappers = {id(wrapper): inner for wrapper, inner in found.values()}
    view = _rebuild(model, wrappers, _ancestors(model, found))
    for attr in (REGISTRY_ATTR, ACTIVE_ATTR):  # the view has no adapters: lorakit must not think it has
        view.__dict__.pop(attr, None)
    uninstall_adapter_saver(view)  # it saves as its class does (the policy's save_pretrained writes the adapter)
    return view


def _check_base_is_original(model: nn.Module) -> None:
    merged = [path for path, layer in lora_layers(model) if layer.merged_adapters]
    if merged:
        raise AdapterError(f"reference_model: adapters are merged into the base weights (e.g. {merged[0]}), so the "
                           "base is not the original model; unmerge_adapter(model) first")
    for name, config in adapter_configs(model).items():
        rewriting = [v.title for v in variants_of(config) if v.decompose is not None]
        if rewriting:
            raise AdapterError(f"reference_model: adapter {name!r} uses {rewriting[0]}, whose initialisation moved "
                               "part of the base weights into the adapter, so the base alone is not the original "
                               "model; use precompute_ref_log_probs=True with ref_model=None instead")


def _ancestors(model: nn.Module, paths: Iterable[str]) -> set[int]:
    """ids of the modules strictly above each path (the root included)."""
    found = {id(model)}
    for path in paths:
        parts = path.split(".")
        for i in range(1, len(parts)):
            found.add(id(model.get_submodule(".".join(parts[:i]))))
    return found


def _rebuild(module: nn.Module, wrappers: dict[int, nn.Module], on_the_way: set[int]) -> nn.Module:
    """`module` with its wrappers swapped for what they wrap: new objects only where the tree changes below."""
    if id(module) in wrappers:
        return wrappers[id(module)]
    if id(module) not in on_the_way:
        return module  # shared as it is: the same parameters, buffers and hooks
    # a new object whose attributes are the same objects: its _parameters and _buffers are the policy's own dicts,
    # so a move of either model (device, dtype) is seen by both
    clone = copy.copy(module)
    clone._modules = {name: child if child is None else _rebuild(child, wrappers, on_the_way)
                      for name, child in module._modules.items()}
    for key, value in list(clone.__dict__.items()):
        if "hook" in key and isinstance(value, dict):  # hooks added to one model later must not run in the other
            clone.__dict__[key] = type(value)(value)
    clone.__dict__.pop("forward", None)  # a forward patched on the policy (e.g. TRL's) is bound to the policy
    return clone
