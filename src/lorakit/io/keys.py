"""Model state-dict keys <-> adapter-file keys (PEFT's format). Pure string functions.

In the model, an adapter's tensors sit under its name:   <path>.lora_A.<name>.weight
In the file the name is dropped and PEFT's prefix added:  base_model.model.<path>.lora_A.weight
Special cases (PEFT's, kept for compatibility):
  <path>.lora_embedding_A.<name>             <->  base_model.model.<path>.lora_embedding_A
  <path>.lora_magnitude_vector.<name>.weight <->  base_model.model.<path>.lora_magnitude_vector
  <path>.modules_to_save.<name>.<param>      <->  base_model.model.<path>.<param>   (the module's own key)
Base-layer biases (bias="all" / "lora_only") keep their model key under the prefix.
"""

from __future__ import annotations

PREFIX = "base_model.model."
# containers whose next key segment is the adapter name
NAMED_CONTAINERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
SAVED_MODULE = "modules_to_save"


def to_file_key(model_key: str, adapter_name: str) -> str | None:
    """File key for a model key of adapter `adapter_name`; None if the key belongs to no adapter tensor of it."""
    parts = model_key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in NAMED_CONTAINERS:
            if parts[i + 1] != adapter_name:
                return None
            rest = parts[i + 2 :]
            if part == "lora_magnitude_vector" and rest == ["weight"]:
                rest = []
            return PREFIX + ".".join(parts[:i + 1] + rest)
        if part == SAVED_MODULE:
            if parts[i + 1] != adapter_name:
                return None
            return PREFIX + ".".join(parts[:i] + parts[i + 2 :])
    return None


def to_model_key(file_key: str, adapter_name: str, saved_module_paths: frozenset[str] = frozenset()) -> str:
    """Model key for a file key. `saved_module_paths`: model paths of modules_to_save wrappers."""
    key = file_key[len(PREFIX):] if file_key.startswith(PREFIX) else file_key
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in NAMED_CONTAINERS:
            rest = parts[i + 1 :]
            if part == "lora_magnitude_vector" and not rest:
                rest = ["weight"]
            return ".".join([*parts[: i + 1], adapter_name, *rest])
    for i in range(len(parts) - 1, 0, -1):
        module_path = ".".join(parts[:i])
        if module_path in saved_module_paths:
            return ".".join([module_path, SAVED_MODULE, adapter_name, *parts[i:]])
    return key


def base_bias_file_key(model_key: str) -> str:
    """Base-model biases trained with bias='all' / 'lora_only' keep their key under PEFT's prefix."""
    return PREFIX + model_key


def layer_path_of(file_key: str) -> str:
    """The adapted layer's module path in a file key (for error messages)."""
    key = file_key[len(PREFIX):] if file_key.startswith(PREFIX) else file_key
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in NAMED_CONTAINERS:
            return ".".join(parts[:i])
    return ".".join(parts[:-1])
