"""Which layers get an adapter, and swapping them in place for their LoRA wrappers (and back)."""

from __future__ import annotations

import importlib
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterator

from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import TargetError
from lorakit.layers.base import AdapterSpec, LoraLayer
from lorakit.layers.conv import LoraConv
from lorakit.layers.embedding import LoraEmbedding
from lorakit.layers.linear import LoraLinear
from lorakit.layers.saved_module import TrainableCopy
from lorakit.variants.registry import layer_variant_name

try:  # GPT-2 style layers: weight stored (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = None

# module type -> factory building its LoRA wrapper. Other files (e.g. layers/quantized.py) register more.
LayerFactory = Callable[[nn.Module], LoraLayer]
LAYER_TYPES: dict[type, LayerFactory] = {
    nn.Linear: LoraLinear,
    nn.Embedding: LoraEmbedding,
    nn.Conv1d: LoraConv,
    nn.Conv2d: LoraConv,
    nn.Conv3d: LoraConv,
}
if Conv1D is not None:
    LAYER_TYPES[Conv1D] = lambda module: LoraLinear(module, fan_in_fan_out=True)
# types that "all-linear" selects
LINEAR_TYPES: set[type] = {nn.Linear} | ({Conv1D} if Conv1D is not None else set())

# Targets used when target_modules is omitted (attention query/value, as in the LoRA paper), by model_type.
DEFAULT_TARGETS: dict[str, list[str]] = {
    **dict.fromkeys(
        ["llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2",
         "opt", "granite", "starcoder2", "cohere", "stablelm", "deepseek_v2", "qwen2_moe", "persimmon", "smollm3"],
        ["q_proj", "v_proj"],
    ),
    **dict.fromkeys(["gpt2", "gpt_bigcode"], ["c_attn"]),
    **dict.fromkeys(
        ["bert", "roberta", "xlm-roberta", "electra", "camembert", "layoutlm", "mpnet"], ["query", "value"]
    ),
    **dict.fromkeys(["distilbert"], ["q_lin", "v_lin"]),
    **dict.fromkeys(["t5", "mt5", "umt5"], ["q", "v"]),
    **dict.fromkeys(["bart", "mbart", "marian", "pegasus", "whisper", "m2m_100"], ["q_proj", "v_proj"]),
    **dict.fromkeys(["gpt_neox", "bloom", "falcon"], ["query_key_value"]),
    **dict.fromkeys(["gptj", "gpt_neo", "codegen"], ["q_proj", "v_proj"]),
    **dict.fromkeys(["deberta", "deberta-v2"], ["query_proj", "value_proj"]),
    **dict.fromkeys(["vit", "dinov2"], ["query", "value"]),
    **dict.fromkeys(["phi"], ["q_proj", "v_proj"]),
}
DEFAULT_LAYER_PATTERNS = ("layers", "h", "block", "blocks", "layer")


def register_layer_type(module_type: type, factory: LayerFactory, linear: bool = False) -> None:
    """Teach lorakit a new base-layer type (e.g. a quantized linear). `linear`: selected by 'all-linear'."""
    LAYER_TYPES[module_type] = factory
    if linear:
        LINEAR_TYPES.add(module_type)


# optional library -> the lorakit module that registers its layer types. Imported once the library is loaded (a
# model cannot hold its layers otherwise), so lorakit itself never imports the library; its `prepare_model(model)`,
# if any, runs before targets are chosen.
OPTIONAL_LAYER_MODULES = {"bitsandbytes": "lorakit.layers.quantized"}


def prepare_optional_types(model: nn.Module) -> None:
    for library, module_name in OPTIONAL_LAYER_MODULES.items():
        if library in sys.modules:
            module = importlib.import_module(module_name)
            if hasattr(module, "prepare_model"):
                module.prepare_model(model)


def factory_for(module: nn.Module) -> LayerFactory | None:
    for klass in type(module).__mro__:
        if klass in LAYER_TYPES:
            return LAYER_TYPES[klass]
    return None


def iter_candidates(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(path, module) for every module, not descending into LoRA wrappers (they count as their base)."""
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        yield path, child
        if not isinstance(child, (LoraLayer, TrainableCopy)):
            yield from iter_candidates(child, path)


def base_of(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, LoraLayer) else module


def find_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Module paths the config selects, validated: something matched and every match can be adapted."""
    prepare_optional_types(model)
    targets = config.target_modules if config.target_modules is not None else default_targets(model)
    head = output_head_path(model)
    saved = config.modules_to_save or []
    chosen: list[str] = []
    for path, module in iter_candidates(model):
        if not _selected(path, base_of(module), targets, head) or _in_saved_module(path, saved):
            continue
        if config.exclude_modules is not None and _name_matches(path, config.exclude_modules):
            continue
        if config.layers_to_transform is not None and not _in_layers(path, config):
            continue
        chosen.append(path)
    if not chosen:
        raise TargetError(_no_match_message(model, config, targets))
    unsupported = [
        (p, type(base_of(m)).__name__) for p, m in _modules_at(model, chosen) if factory_for(base_of(m)) is None
    ]
    if unsupported:
        path, kind = unsupported[0]
        raise TargetError(
            f"target_modules selects {path!r}, a {kind}, which LoRA cannot adapt; lorakit adapts "
            f"{sorted(t.__name__ for t in LAYER_TYPES)}. Narrow target_modules (e.g. to its Linear children)"
        )
    return chosen


def default_targets(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    raise TargetError(
        f"no default target_modules for model_type={model_type!r}; set target_modules, e.g. a list of layer "
        f"names, a regex, or 'all-linear'. Linear layers in this model: {linear_names(model)}"
    )


def output_head_path(model: nn.Module) -> str | None:
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return None
    for path, module in iter_candidates(model):
        if module is head or base_of(module) is head:
            return path
    return None


def _selected(path: str, module: nn.Module, targets: list[str] | str, head: str | None) -> bool:
    if targets == "all-linear":
        return type(module) in LINEAR_TYPES and path != head
    return _name_matches(path, targets)


def _in_saved_module(path: str, saved: list[str]) -> bool:
    """A module trained in full (modules_to_save), or inside one, never gets an adapter (PEFT's rule)."""
    return any(re.match(rf"(^|.*\.){re.escape(name)}($|\..*)", path) for name in saved)


def _name_matches(path: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    return any(path == t or path.endswith("." + t) for t in targets)


def _in_layers(path: str, config: LoraConfig) -> bool:
    patterns = config.layers_pattern or DEFAULT_LAYER_PATTERNS
    patterns = [patterns] if isinstance(patterns, str) else patterns
    for pattern in patterns:
        match = re.match(rf".*\.{pattern}\.(\d+)\.", path) or re.match(rf"{pattern}\.(\d+)\.", path)
        if match:
            return int(match.group(1)) in config.layers_to_transform
    return False


def _modules_at(model: nn.Module, paths: list[str]) -> list[tuple[str, nn.Module]]:
    return [(p, model.get_submodule(p)) for p in paths]


def linear_names(model: nn.Module) -> list[str]:
    return sorted({p.rsplit(".", 1)[-1] for p, m in iter_candidates(model) if type(base_of(m)) in LINEAR_TYPES})


def _no_match_message(model: nn.Module, config: LoraConfig, targets: list[str] | str) -> str:
    what = f"target_modules={targets!r}"
    if config.exclude_modules is not None:
        what += f" with exclude_modules={config.exclude_modules!r}"
    if config.layers_to_transform is not None:
        what += f" and layers_to_transform={config.layers_to_transform}"
    others = sorted({p.rsplit(".", 1)[-1] for p, m in iter_candidates(model) if factory_for(base_of(m)) is not None})
    return f"{what} matched no layer; Linear layers in this model: {linear_names(model)}; all adaptable: {others}"


# -- swapping wrappers in and out ------------------------------------------------------------------------
def spec_for(config: LoraConfig, path: str) -> AdapterSpec:
    return AdapterSpec(
        r=config.rank_for(path), lora_alpha=config.alpha_for(path), lora_dropout=config.lora_dropout,
        use_rslora=config.use_rslora, init_lora_weights=config.init_lora_weights, lora_bias=config.lora_bias,
        variant=layer_variant_name(config),
    )


def layer_sizes(module: nn.Module) -> tuple[int, int] | None:
    """(inputs, outputs) of an adaptable layer as B·A sees them, or None for a type this cannot tell."""
    module = base_of(module)
    if hasattr(module, "in_features") and hasattr(module, "out_features"):  # Linear and quantized linears
        return int(module.in_features), int(module.out_features)
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):  # lora_A sees every input channel of a kernel window
        return module.in_channels // module.groups * math.prod(module.kernel_size), module.out_channels
    if Conv1D is not None and isinstance(module, Conv1D):  # weight stored (in, out)
        return tuple(module.weight.shape)
    return None


def oversized_ranks(model: nn.Module, config: LoraConfig, paths: list[str]) -> list[tuple[str, int, int, int]]:
    """(path, r, inputs, outputs) of the layers where r > min(inputs, outputs): B·A has rank min(inputs, outputs) at
    most, so the extra rank only adds parameters (r = 1000 on a 32-wide layer trains more than the layer has)."""
    found = []
    for path in paths:
        sizes = layer_sizes(model.get_submodule(path))
        r = config.rank_for(path)
        if sizes is not None and r > min(sizes):
            found.append((path, r, *sizes))
    return found


def describe_oversized(found: list[tuple[str, int, int, int]]) -> str:
    path, r, inputs, outputs = found[0]
    more = f" (and {len(found) - 1} more layers)" if len(found) > 1 else ""
    return (f"rank r={r} is larger than layer {path!r} can use: {inputs} inputs, {outputs} outputs, so B·A has rank "
            f"at most {min(inputs, outputs)}{more}; the extra rank only adds parameters")


def inject(model: nn.Module, config: LoraConfig, adapter_name: str) -> list[str]:
    """Add adapter `adapter_name` to every selected layer, wrapping the ones not yet wrapped. Returns the paths."""
    paths = find_targets(model, config)
    oversized = oversized_ranks(model, config, paths)
    if oversized:  # PEFT allows it; it is rarely meant (lorakit train refuses it)
        warnings.warn(describe_oversized(oversized) + "; lower r (or rank_pattern for these layers)", stacklevel=3)
    custom = getattr(config, "inject_layer", None)  # a variant config may wrap and add with its own layer types
    for path in paths:
        module = model.get_submodule(path)
        if custom is not None:
            wrapper = custom(module, path, adapter_name)
            if wrapper is not module:
                set_submodule(model, path, wrapper)
            continue
        if not isinstance(module, LoraLayer):
            module = factory_for(module)(module)
            set_submodule(model, path, module)
        module.add_adapter(adapter_name, spec_for(config, path))
    return paths


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield path, module


def trainable_copies(model: nn.Module) -> Iterator[tuple[str, TrainableCopy]]:
    for path, module in model.named_modules():
        if isinstance(module, TrainableCopy):
            yield path, module
