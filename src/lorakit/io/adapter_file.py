"""An adapter as read from disk: one typed object for every reader (load_adapter, the server's cache, inspect).

`io/checkpoint.read_adapter` returns an `AdapterFile`: the config (a variant's own config class when its peft_type
says so), lorakit's records, the tensors under their file keys, and the directory. It is a NamedTuple, so
`config, records, tensors, directory = read_adapter(path)` keeps working. What readers need beyond that:

    layers()        {layer path: {role: tensor}}, roles as in the key after the path ("lora_A.weight",
                    "lora_B.bias", "lora_embedding_A", "lora_magnitude_vector", a variant's own, ...)
    others()        {file key: tensor} of the tensors in no adapter container (modules_to_save copies, base biases)
    plain_layers()  layers() with a variant's own factors as plain LoRA's "lora_A.weight" / "lora_B.weight"
                    (variants/registry.py: plain_parts), so code that only knows plain LoRA can use them
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from lorakit.config import LoraConfig
from lorakit.io.keys import named_containers, strip_prefix
from lorakit.variants.registry import Variant, variants_of, with_hook


class AdapterFile(NamedTuple):
    config: LoraConfig
    records: dict[str, Any]  # lorakit_* records: fingerprint, version, a variant's
    tensors: dict[str, torch.Tensor]  # file key -> tensor
    directory: Path

    @property
    def variants(self) -> list[Variant]:
        """The registered variants this adapter uses."""
        return variants_of(self.config)

    def split(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """(layers(), others()) in one pass over the keys."""
        containers = named_containers()
        layers: dict[str, dict[str, torch.Tensor]] = {}
        others: dict[str, torch.Tensor] = {}
        for key, tensor in self.tensors.items():
            parts = strip_prefix(key).split(".")
            i = next((i for i, part in enumerate(parts) if part in containers), None)
            if i is None:
                others[key] = tensor
            else:
                layers.setdefault(".".join(parts[:i]), {})[".".join(parts[i:])] = tensor
        return layers, others

    def layers(self) -> dict[str, dict[str, torch.Tensor]]:
        return self.split()[0]

    def others(self) -> dict[str, torch.Tensor]:
        return self.split()[1]

    def plain_layers(self) -> dict[str, dict[str, torch.Tensor]]:
        layers = self.layers()
        variant = with_hook(self.config, "plain_parts")
        if variant is None:
            return layers
        return {path: variant.plain_parts(parts) for path, parts in layers.items()}
