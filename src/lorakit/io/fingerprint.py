"""A fingerprint of the base model an adapter was made for, checked before the adapter is loaded.

Written into the safetensors metadata of adapter_model.safetensors as `lorakit_fingerprint` (JSON; io/metadata.py:
PEFT and transformers do not read it); files of older lorakit versions have it in adapter_config.json.
  architecture   the model's class name (a different class of the same family only warns: LlamaForCausalLM
                 and LlamaForSequenceClassification share their layers)
  model_type     transformers' config.model_type; a different one is refused
  vocab_size     a different one only warns (resized vocabularies are normal when embeddings are not adapted)
  layer_shapes   {layer path: base weight shape} of every adapted layer; the first layer (in model order) whose
                 shape differs, or that the model lacks, is refused with both shapes
  layers_sha256  sha256 of layer_shapes (a compact summary to compare fingerprints by)
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

from torch import nn

from lorakit.errors import AdapterFileError
from lorakit.inject import base_of, lora_layers
from lorakit.layers.base import weight_shape


def layer_shapes(model: nn.Module, adapter_name: str) -> dict[str, list[int]]:
    return {path: list(layer.base_shape) for path, layer in lora_layers(model) if adapter_name in layer.r}


def shapes_sha256(shapes: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()


def fingerprint(model: nn.Module, adapter_name: str) -> dict[str, Any]:
    config = getattr(model, "config", None)
    shapes = layer_shapes(model, adapter_name)
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "layers_sha256": shapes_sha256(shapes),
        "layer_shapes": shapes,
    }


def check_fingerprint(saved: dict[str, Any], model: nn.Module, source: str) -> None:
    """Refuse a base whose type or targeted layers differ from the one the adapter was saved from."""
    if not isinstance(saved, dict):
        raise AdapterFileError(f"{source}: lorakit_fingerprint should be a JSON object, found {saved!r}")
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if saved.get("model_type") and model_type and saved["model_type"] != model_type:
        raise AdapterFileError(
            f"{source} was made for a {saved['model_type']!r} model ({saved.get('architecture')}); this model is "
            f"{model_type!r} ({type(model).__name__})"
        )
    if saved.get("architecture") and saved["architecture"] != type(model).__name__:
        warnings.warn(
            f"{source} was saved from a {saved['architecture']}; loading it onto a {type(model).__name__}",
            stacklevel=3,
        )
    vocab = getattr(config, "vocab_size", None)
    if saved.get("vocab_size") and vocab and saved["vocab_size"] != vocab:
        warnings.warn(
            f"{source} was saved from a model with vocab_size={saved['vocab_size']}; this model has {vocab}",
            stacklevel=3,
        )
    shapes = saved.get("layer_shapes")
    if isinstance(shapes, dict):
        _check_shapes(shapes, model, source)


def _check_shapes(shapes: dict[str, Any], model: nn.Module, source: str) -> None:
    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    # model order, so the message names the earliest layer that differs; layers the model lacks come last
    for path in sorted(shapes, key=lambda p: (p not in order, order.get(p, 0), p)):
        if path not in order:
            raise AdapterFileError(
                f"{source} adapts layer {path}, which this model does not have (was it saved from another base?)"
            )
        module = base_of(model.get_submodule(path))
        if getattr(module, "weight", None) is None:
            raise AdapterFileError(f"{source} adapts layer {path}, which has no weight in this model")
        here = list(weight_shape(module))
        if here != list(shapes[path]):
            raise AdapterFileError(
                f"{source} does not fit this base model: layer {path} has weight shape {tuple(shapes[path])} in the "
                f"model the adapter was saved from, and {tuple(here)} in this one"
            )
