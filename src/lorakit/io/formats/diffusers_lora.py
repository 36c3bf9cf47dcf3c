"""diffusers' LoRA file (`pytorch_lora_weights.safetensors`, what `pipe.save_lora_weights` writes). Pure mappings.

Keys: "<component>.<module path inside it>.<role>", the component being the pipeline attribute ("unet",
"transformer", "text_encoder", "text_encoder_2"). Roles, today's and the older ones diffusers still reads:

    .lora_A.weight / .lora_B.weight                     today's (PEFT's names)
    .lora.down.weight / .lora.up.weight                 diffusers' own LoRA layers (0.2x)
    .lora_linear_layer.down.weight / .up.weight         old text-encoder patches
    .processor.to_q_lora.down.weight (to_k, to_v, to_out)  attention processors (0.1x); to_out is "to_out.0"
    .alpha                                              per-module alpha of the older forms (scaling alpha / r)

The safetensors metadata key "lora_adapter_metadata" holds JSON {"<component>.<PEFT LoraConfig field>": value}:
each component's LoRA config, which diffusers passes to PEFT's LoraConfig. Without it diffusers infers r from the
shapes and sets lora_alpha = r, so lorakit always writes it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from lorakit.errors import AdapterFileError

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")

# key ending -> the tensor's role in lorakit / PEFT keys ("alpha": a scalar of the older forms)
ROLES: dict[str, str] = {
    ".lora_A.weight": "lora_A.weight",
    ".lora_B.weight": "lora_B.weight",
    ".lora_B.bias": "lora_B.bias",
    ".lora_magnitude_vector": "lora_magnitude_vector",
    ".lora.down.weight": "lora_A.weight",
    ".lora.up.weight": "lora_B.weight",
    ".lora_linear_layer.down.weight": "lora_A.weight",
    ".lora_linear_layer.up.weight": "lora_B.weight",
    ".alpha": "alpha",
}
# attention-processor names of the 0.1x files -> the module they adapt
PROCESSORS = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}
PROCESSOR_KEY = re.compile(r"(?:(.*)\.)?processor\.(to_q_lora|to_k_lora|to_v_lora|to_out_lora)\.(down|up)\.weight")


def is_diffusers_key(key: str) -> bool:
    return key.split(".", 1)[0] in COMPONENTS


def split_key(key: str) -> tuple[str, str, str]:
    """"unet.down_blocks.0...to_q.lora_A.weight" -> ("unet", "down_blocks.0...to_q", "lora_A.weight")."""
    component, _, rest = key.partition(".")
    processor = PROCESSOR_KEY.fullmatch(rest)
    if processor is not None:  # <block>.processor.to_q_lora.down.weight
        head, name, side = processor.groups()
        path = f"{head}.{PROCESSORS[name]}" if head else PROCESSORS[name]
        return component, path, "lora_A.weight" if side == "down" else "lora_B.weight"
    for ending, role in ROLES.items():
        if rest.endswith(ending):
            return component, rest[: -len(ending)], role
    raise AdapterFileError(
        f"tensor {key}: not a LoRA tensor lorakit reads (expected a key ending in "
        f"{', '.join(e for e in ROLES if e != '.alpha')}, .processor.to_q_lora.down.weight or .alpha); "
        "convert the file with diffusers first"
    )


def split_components(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, float]]]:
    """{component: (tensors keyed "<path>.lora_A.weight" ..., {path: alpha} of the older forms)}."""
    out: dict[str, tuple[dict[str, torch.Tensor], dict[str, float]]] = {}
    for key, tensor in tensors.items():
        component, path, role = split_key(key)
        found, alphas = out.setdefault(component, ({}, {}))
        if role == "alpha":
            alphas[path] = float(tensor.item())
        else:
            found[f"{path}.{role}"] = tensor
    return out


def join_components(components: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The inverse for today's form: {component: {"<path>.lora_A.weight": t}} -> {"<component>.<path>...": t}."""
    return {f"{name}.{key}": t for name, tensors in components.items() for key, t in tensors.items()}


def encode_metadata(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The safetensors metadata diffusers reads: each component's PEFT LoraConfig fields under "<component>."."""
    flat = {f"{name}.{field}": _jsonable(value) for name, values in configs.items() for field, value in values.items()}
    return {"format": "pt", METADATA_KEY: json.dumps(flat, indent=2, sort_keys=True)}


def decode_metadata(metadata: dict[str, str], source: str) -> dict[str, dict[str, Any]]:
    """{component: {field: value}} from a file's safetensors metadata ({} when it has none)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AdapterFileError(f"{source}: metadata {METADATA_KEY} is not valid JSON ({exc.msg})") from None
    if not isinstance(flat, dict):
        raise AdapterFileError(f"{source}: metadata {METADATA_KEY} should be a JSON object")
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        out.setdefault(component, {})[field] = value
    return out


def _jsonable(value: Any) -> Any:
    return sorted(value) if isinstance(value, (set, tuple)) else value
