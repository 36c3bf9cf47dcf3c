"""Model state-dict keys <-> adapter-file keys (PEFT's format). Pure string functions.

In the model, an adapter's tensors sit under its name:   <path>.lora_A.<name>.weight
In the file the name is dropped and PEFT's prefix added:  base_model.model.<path>.lora_A.weight
Special cases (PEFT's, kept for compatibility):
  <path>.lora_embedding_A.<name>             <->  base_model.model.<path>.lora_embedding_A
  <path>.lora_magnitude_vector.<name>.weight <->  base_model.model.<path>.lora_magnitude_vector   (no ".weight")
  <path>.modules_to_save.<name>.<param>      <->  base_model.model.<path>.<param>   (the module's own key)
Base-layer biases (bias="all" / "lora_only") keep their model key under the prefix.
A registered variant's own tensor roles (variants/registry.py: file_roles) are containers like lora_A's.

Keys are split on "." and matched segment by segment, so an adapter name that is also part of a module name
("q" vs "q_proj", "layers" vs "model.layers.0") is never cut out of a path.
"""

from __future__ import annotations

from lorakit.variants.registry import file_roles

PREFIX = "base_model.model."
# containers whose next key segment is the adapter name
NAMED_CONTAINERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
MAGNITUDE = "lora_magnitude_vector"
SAVED_MODULE = "modules_to_save"
ORIGINAL_MODULE = "original_module"


def named_containers() -> tuple[str, ...]:
    """PEFT's containers and the registered variants' own roles."""
    return NAMED_CONTAINERS + tuple(role for role in file_roles() if role not in NAMED_CONTAINERS)


def strip_prefix(file_key: str) -> str:
    return file_key[len(PREFIX):] if file_key.startswith(PREFIX) else file_key


def to_file_key(model_key: str, adapter_name: str) -> str | None:
    """File key for a model key of adapter `adapter_name`; None if the key belongs to no adapter tensor of it."""
    parts, containers = model_key.split("."), named_containers()
    for i, part in enumerate(parts[:-1]):
        if part in containers:
            if parts[i + 1] != adapter_name:
                return None
            rest = parts[i + 2 :]
            if part == MAGNITUDE and rest == ["weight"]:
                rest = []  # PEFT writes the magnitude vector without ".weight"
            return PREFIX + ".".join(parts[: i + 1] + rest)
        if part == SAVED_MODULE:
            if parts[i + 1] != adapter_name:
                return None
            return PREFIX + ".".join(parts[:i] + parts[i + 2 :])
    return None


def to_model_key(file_key: str, adapter_name: str, saved_module_paths: frozenset[str] = frozenset()) -> str:
    """Model key for a file key. `saved_module_paths`: model paths of modules_to_save wrappers."""
    return model_key_candidates(file_key, adapter_name, saved_module_paths)[0]


def model_key_candidates(
    file_key: str, adapter_name: str, saved_module_paths: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """Model keys a file key may stand for, most likely first.

    The magnitude vector may be a module's `.weight` (PEFT's layout) or a bare parameter; the loader takes the
    first candidate the model has."""
    parts, containers = strip_prefix(file_key).split("."), named_containers()
    for i, part in enumerate(parts):
        if part in containers:
            named = ".".join([*parts[: i + 1], adapter_name, *parts[i + 1 :]])
            if part == MAGNITUDE and i == len(parts) - 1:
                return (named + ".weight", named)
            return (named,)
    for i in range(len(parts) - 1, 0, -1):
        module_path = ".".join(parts[:i])
        if module_path not in saved_module_paths:
            continue
        rest = parts[i:]
        if rest[0] == ORIGINAL_MODULE:  # the wrapped original (a base bias under bias="all"): its own key
            return (".".join(parts),)
        if rest[0] == SAVED_MODULE and len(rest) > 1:
            # PEFT (bias="all" with modules_to_save) also writes <path>.modules_to_save.<param>, without the
            # adapter name: the same tensor as the copy's <param>
            rest = rest[1:]
        return (".".join([module_path, SAVED_MODULE, adapter_name, *rest]),)
    return (".".join(parts),)


def base_bias_file_key(model_key: str) -> str:
    """Base-model biases trained with bias='all' / 'lora_only' keep their key under PEFT's prefix."""
    return PREFIX + model_key


def layer_path_of(file_key: str) -> str:
    """The adapted layer's module path in a file key (for error messages)."""
    parts, containers = strip_prefix(file_key).split("."), named_containers()
    for i, part in enumerate(parts):
        if part in containers:
            return ".".join(parts[:i])
    return ".".join(parts[:-1])


def tensor_role(file_key: str) -> str:
    """What a file key holds, for messages: "lora_A", "lora_B.bias", "lora_magnitude_vector", or the last segment."""
    parts, containers = strip_prefix(file_key).split("."), named_containers()
    for i, part in enumerate(parts):
        if part in containers:
            rest = parts[i + 1 :]
            return part if rest in ([], ["weight"]) else ".".join([part, *rest])
    return parts[-1]
