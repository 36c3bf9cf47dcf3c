"""A fingerprint of the base model an adapter was made for, checked before the adapter is loaded."""

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


def fingerprint(model: nn.Module, adapter_name: str) -> dict[str, Any]:
    config = getattr(model, "config", None)
    shapes = layer_shapes(model, adapter_name)
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "layers_sha256": hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest(),
        "layer_shapes": shapes,
    }


def check_fingerprint(saved: dict[str, Any], model: nn.Module, source: str) -> None:
    """Refuse a base whose targeted layers differ from the one the adapter was saved from."""
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
    for path, shape in (saved.get("layer_shapes") or {}).items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise AdapterFileError(
                f"{source} adapts layer {path}, which this model does not have (was it saved from another base?)"
            ) from None
        here = list(weight_shape(base_of(module)))
        if here != list(shape):
            raise AdapterFileError(
                f"{source} does not fit this base model: layer {path} had weight shape {tuple(shape)} in the model "
                f"the adapter was trained on, and has {tuple(here)} here"
            )
