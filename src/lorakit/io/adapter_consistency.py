"""Do an adapter's tensors agree with its adapter_config.json? Checked without a base model (for `lorakit
inspect`), the model-free part of what load_adapter refuses when it copies the tensors into a model:

  - every tensor is floating point
  - every adapted layer has both halves (lora_A and lora_B, or the embedding pair)
  - lora_A's rank is the r the config gives that layer (r, rank_pattern), and lora_B takes that rank
  - a layer's tensors are for a layer target_modules selects (a list of names or a regex; "all-linear" needs the
    model to tell), a variant's own tensors (variants/registry.py: file_roles) only with the variant on, lora_B
    biases only with lora_bias
  - any other tensor belongs to a modules_to_save module or is a base bias trained with bias="all"/"lora_only"

What needs the model (a layer that does not exist, in/out sizes) only the loader can check.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lorakit.config import LoraConfig
from lorakit.io.adapter_file import AdapterFile
from lorakit.io.keys import strip_prefix
from lorakit.variants.registry import Variant, file_roles, variants_of, with_hook

PAIRS = {"lora_A": "lora_B", "lora_B": "lora_A", "lora_embedding_A": "lora_embedding_B",
         "lora_embedding_B": "lora_embedding_A"}


def first_problem(config: LoraConfig, tensors: dict[str, torch.Tensor]) -> str | None:
    """A sentence naming the first disagreement (keys in sorted order), or None when the files agree."""
    for key in sorted(tensors):
        if not tensors[key].is_floating_point():
            return f"tensor {key} has dtype {tensors[key].dtype}, expected floating point"
    variant = with_hook(config, "consistency")  # a variant whose file form has its own rules
    if variant is not None:
        return variant.consistency(config, tensors)
    grouped, others = AdapterFile(config, {}, tensors, Path()).split()  # the readers' one grouping per layer
    for key in sorted(others):
        problem = _other_tensor_problem(config, key)
        if problem:
            return problem
    # roles as messages name them ("lora_A", "lora_B.bias"); layers in the order of their first file key
    layers = {path: {role.removesuffix(".weight"): t for role, t in grouped[path].items()}
              for path in sorted(grouped, key=lambda p: min(f"{p}.{role}" for role in grouped[p]))}
    if not layers:
        return "it holds no LoRA tensors (lora_A / lora_B)"
    for path, roles in layers.items():
        problem = _layer_problem(config, path, roles)
        if problem:
            return f"layer {path}: {problem}"
    return None


def _layer_problem(config: LoraConfig, path: str, roles: dict[str, torch.Tensor]) -> str | None:
    for role in roles:
        if role in PAIRS and PAIRS[role] not in roles:
            return f"the file has {role} but no {PAIRS[role]}"
    targets = config.target_modules
    if isinstance(targets, list) and not any(path == t or path.endswith("." + t) for t in targets):
        return f"not selected by target_modules={targets} (an extra tensor, or a config that does not record it)"
    if isinstance(targets, str) and targets != "all-linear" and re.fullmatch(targets, path) is None:
        return f"not selected by target_modules={targets!r} (an extra tensor, or a config that does not record it)"
    used = variants_of(config)
    for role, variant in file_roles().items():  # a variant's tensors exactly when its config says so
        if role in roles and variant not in used:
            return f"the file has a {variant.title} {role}, but adapter_config.json has {_switch(variant)}=false"
        if variant in used and variant.flag and role not in roles:
            return f"adapter_config.json has {variant.flag}=true, but the file has no {role} for it"
    if "lora_B.bias" in roles and not config.lora_bias:
        return "the file has a lora_B bias, but adapter_config.json has lora_bias=false"
    a, b = roles.get("lora_A", roles.get("lora_embedding_A")), roles.get("lora_B", roles.get("lora_embedding_B"))
    if a is None or b is None:
        return None
    want = config.rank_for(path)
    if a.dim() < 2 or a.shape[0] != want:
        return f"lora_A is {tuple(a.shape)}, rank {a.shape[0] if a.dim() else 0} in the file, but " \
               f"adapter_config.json gives this layer r={want}"
    if b.dim() == 2 and b.shape[1] != a.shape[0]:  # conv B may be grouped (r / groups)
        return f"lora_B is {tuple(b.shape)}, which does not take lora_A's rank {a.shape[0]}"
    return None


def _other_tensor_problem(config: LoraConfig, key: str) -> str | None:
    path = strip_prefix(key)
    saved = config.modules_to_save or []
    if any(re.match(rf"(^|.*\.){re.escape(name)}($|\..*)", path) for name in saved):
        return None
    if path.endswith(".bias") and config.bias in ("all", "lora_only"):
        return None
    return (f"tensor {key} is not a LoRA tensor, and neither modules_to_save={config.modules_to_save} nor "
            f"bias={config.bias!r} accounts for it")


def _switch(variant: Variant) -> str:
    return variant.flag or (f"peft_type={variant.peft_type!r}" if variant.peft_type else variant.name)
