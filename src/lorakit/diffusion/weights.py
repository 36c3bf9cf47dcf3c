"""Using adapters in a diffusers pipeline: each adapter's strength, several at once, fusing, saving a plain pipeline.

The field's "weight" (or "strength") of a LoRA multiplies its update: in every layer of every component,

    y = base(x) + sum over active adapters a:  weight_a * s_a * B_a A_a x        s_a = lora_alpha / r (or rsLoRA's)

which is what diffusers' `pipe.set_adapters(names, adapter_weights)` computes with PEFT layers. The text
encoders take the same weight as the denoiser, as diffusers does for a plain number. The layer's scaling is set
from s_a each time (never from its current value), so calling set_adapter_weights again does not compound.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from torch import nn

from lorakit.adapter_state import active_adapters, adapter_configs, set_adapter
from lorakit.adapters import merge_adapter, merge_and_unload, unmerge_adapter
from lorakit.errors import AdapterError, ConfigError
from lorakit.hf.pipelines import lora_components, quiet
from lorakit.inject import lora_layers
from lorakit.io.atomic import atomic_directory
from lorakit.layers.lowrank import lora_scaling


def pipeline_adapters(pipe) -> dict[str, list[str]]:
    """{adapter name: the components holding it}."""
    found: dict[str, list[str]] = {}
    for component, module in lora_components(pipe).items():
        for name in adapter_configs(module):
            found.setdefault(name, []).append(component)
    return found


def set_adapter_weights(pipe, weights: dict[str, float]) -> None:
    """Activate exactly the adapters in `weights`, in every component that holds them, each at weight * its own
    scaling; the other adapters are switched off. A weight of 0 is allowed (the adapter adds nothing)."""
    known = pipeline_adapters(pipe)
    unknown = [name for name in weights if name not in known]
    if unknown:
        raise AdapterError(f"no adapter named {unknown[0]!r} in the pipeline; it has {sorted(known) or 'none'}")
    for name, weight in weights.items():
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"adapter {name!r}: weight {weight!r} is not a finite number")
    for module in lora_components(pipe).values():
        held = adapter_configs(module)
        if not held:
            continue
        present = [name for name in weights if name in held]
        set_adapter(module, present)  # an empty list switches every adapter of this component off
        for _, layer in lora_layers(module):
            for name in present:
                if name in layer.r:
                    own = lora_scaling(layer.lora_alpha[name], layer.r[name], held[name].use_rslora)
                    layer.set_scale(name, float(weights[name]) * own)


def fuse_adapters(pipe, weights: dict[str, float] | None = None, safe_merge: bool = True):
    """Merge the adapters into the base weights (at `weights`, else as they are active now) and remove every LoRA
    layer: a plain pipeline whose outputs equal the adapted one's. All or nothing: with `safe_merge` a NaN/Inf in
    any component is refused and every component is left as it was. Returns the pipeline."""
    if weights is not None:
        set_adapter_weights(pipe, weights)
    adapted = [m for m in lora_components(pipe).values() if adapter_configs(m)]
    merged: list[nn.Module] = []
    try:
        for module in adapted:
            merge_adapter(module, active_adapters(module), safe_merge=safe_merge)
            merged.append(module)
    except Exception:
        for module in merged:
            unmerge_adapter(module)
        raise
    for module in adapted:
        merge_and_unload(module, adapter_names=[])  # all merged already: this only swaps the wrappers out
    return pipe


def save_plain_pipeline(pipe, directory: str | Path, overwrite: bool = False) -> Path:
    """Write a pipeline without LoRA layers (fuse_adapters first) as a folder plain diffusers loads; written aside
    and renamed into place, so a failure leaves no half-written folder (and with `overwrite` the old one whole)."""
    left = [c for c, m in lora_components(pipe).items() if next(lora_layers(m), None) is not None]
    if left:
        raise AdapterError(f"the pipeline's {left[0]} still holds LoRA layers; fuse_adapters(pipe) first, or save the "
                           "adapter itself")
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or (any(directory.iterdir()) and not overwrite)):
        raise ConfigError(f"{directory} exists and is not an empty folder; choose another one or overwrite it")
    with atomic_directory(directory) as tmp:
        umask = os.umask(0)  # mkdtemp makes the folder private (0700); give it a new folder's usual permissions
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        with quiet():
            pipe.save_pretrained(tmp)
    return directory
