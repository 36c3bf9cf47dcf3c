"""lorakit: LoRA adapters for PyTorch and Hugging Face models, in PEFT's on-disk format."""

from lorakit import hf_save as _hf_save  # noqa: F401  (save_pretrained follows the model's adapters)
from lorakit.adapters import (
    active_adapters,
    add_adapter,
    count_parameters,
    delete_adapter,
    disable_adapters,
    get_config,
    list_adapters,
    merge_adapter,
    merge_and_unload,
    print_trainable_parameters,
    set_adapter,
    unload,
    unmerge_adapter,
)
from lorakit.combine import combine_adapters
from lorakit.config import LoraConfig
from lorakit.errors import (
    AdapterError,
    AdapterFileError,
    ConfigError,
    LorakitError,
    MergeError,
    TargetError,
)
from lorakit.inject import register_layer_type
from lorakit.io.checkpoint import adapter_state_dict, load_adapter, read_adapter, save_adapter
from lorakit.mixed import mixed_adapters
from lorakit.variants import builtin as _builtin_variants  # noqa: F401  (registers the built-in variants)
from lorakit.version import __version__

__all__ = [
    "AdapterError",
    "AdapterFileError",
    "ConfigError",
    "LoraConfig",
    "LorakitError",
    "MergeError",
    "TargetError",
    "__version__",
    "active_adapters",
    "adapter_state_dict",
    "add_adapter",
    "combine_adapters",
    "count_parameters",
    "delete_adapter",
    "disable_adapters",
    "get_config",
    "list_adapters",
    "load_adapter",
    "merge_adapter",
    "merge_and_unload",
    "mixed_adapters",
    "print_trainable_parameters",
    "read_adapter",
    "register_layer_type",
    "save_adapter",
    "set_adapter",
    "unload",
    "unmerge_adapter",
]

_LAZY = {  # optional dependencies (bitsandbytes): imported on first use, so `import lorakit` never needs them
    "quantize_model": "lorakit.quantize",
    "merge_with_report": "lorakit.merge_report",
}


_LAZY_MODULES = ("quantize",)  # `lorakit.quantize.quantization_of(...)` after a bare `import lorakit` (docs/qlora.md)


def __getattr__(name: str):
    if name in _LAZY or name in _LAZY_MODULES:
        import importlib

        if name in _LAZY_MODULES:
            return importlib.import_module(f"lorakit.{name}")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lorakit' has no attribute {name!r}")
