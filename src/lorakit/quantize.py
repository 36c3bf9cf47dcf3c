"""Quantize a model's linear layers with bitsandbytes (NF4 / FP4 / int8), and turn them back into nn.Linear.

    model = quantize_model(model, method="nf4", compute_dtype=torch.bfloat16, double_quant=True)
    lorakit.add_adapter(model, LoraConfig(r=16, target_modules="all-linear"))      # QLoRA

Every `nn.Linear` becomes a bitsandbytes `Linear4bit` / `Linear8bitLt`, except the output head and the
modules named in `skip_modules` (classification heads by default). Embeddings and norms are not linear layers,
so they keep their precision, as does the head. bitsandbytes is reached through lorakit/bnb.py only (which also
reads and writes one quantized layer's weight and works around two CPU bugs of bitsandbytes 0.50; see there), and
imported only when quantization is used.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from lorakit.bnb import (
    cpu_4bit_kernel_is_wrong,
    dequantize_linear,
    import_bitsandbytes,
    is_4bit,
    is_quantized,
    prepare_layer,
    prepare_model,
    quantized_layers,
)
from lorakit.errors import ConfigError
from lorakit.inject import prepare_optional_types, set_submodule
from lorakit.layers.base import LoraLayer

__all__ = [  # with bnb.py's model-level helpers, documented as lorakit.quantize.* (docs/qlora.md)
    "DEFAULT_SKIP", "METHODS", "QuantConfig", "apply_quantization", "dequantize_model", "finish_quantization",
    "import_bitsandbytes", "is_4bit", "is_quantized", "parse_dtype", "plan_quantization", "prepare_model",
    "quantization_of", "quantize_linear", "quantize_model", "quantized_bytes", "quantized_layers",
]
METHODS = ("nf4", "fp4", "int8")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
# Heads that must stay trainable / precise: the output head is found via get_output_embeddings(); these are the
# task heads of transformers' classification / QA models.
DEFAULT_SKIP = ("lm_head", "classifier", "score", "qa_outputs")
QUANT_ATTR = "_lorakit_quantization"  # the QuantConfig a model was quantized with (in model.__dict__)


@dataclass
class QuantConfig:
    """How quantize_model packs the base's linear layers."""

    method: str = "nf4"  # nf4 | fp4 (4-bit, QLoRA) | int8 (LLM.int8, per-row absmax)
    compute_dtype: torch.dtype | str = torch.float32  # dtype 4-bit matmuls run in (x and dequantized W)
    double_quant: bool = True  # 4-bit: quantize the per-block scales too (~0.516 instead of 0.5625 bytes/param)
    blocksize: int = 64  # 4-bit: weights sharing one scale
    skip_modules: list[str] | None = None  # names (or dotted suffixes) kept full precision; None = DEFAULT_SKIP
    int8_threshold: float = 6.0  # int8: activation outlier threshold (LLM.int8 mixed precision); 0 = none

    def __post_init__(self) -> None:
        method = str(self.method).lower()
        if method not in METHODS:
            raise ConfigError(f"quantization method {self.method!r} is not supported; choose one of {list(METHODS)}")
        self.method = method
        self.compute_dtype = parse_dtype(self.compute_dtype)
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise ConfigError(f"blocksize={self.blocksize!r}: expected a power of two from 32 to 4096 (default 64)")
        if isinstance(self.skip_modules, str):
            self.skip_modules = [self.skip_modules]

    @property
    def is_4bit(self) -> bool:
        return self.method in ("nf4", "fp4")


def parse_dtype(value: torch.dtype | str) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    key = str(value).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ConfigError(f"compute_dtype={value!r}: expected one of {sorted(set(DTYPES))}")
    return DTYPES[key]


# -- quantizing --------------------------------------------------------------------------------------------------
def quantize_model(
    model: nn.Module,
    method: str = "nf4",
    compute_dtype: torch.dtype | str = torch.float32,
    double_quant: bool = True,
    skip_modules: list[str] | None = None,
) -> nn.Module:
    """Replace the model's nn.Linear layers by bitsandbytes ones, in place; returns the model.

    Quantize before adding adapters. The output head and `skip_modules` (default: DEFAULT_SKIP) stay as they are."""
    config = QuantConfig(method=method, compute_dtype=compute_dtype, double_quant=double_quant,
                         skip_modules=skip_modules)
    return apply_quantization(model, config)


def apply_quantization(model: nn.Module, config: QuantConfig) -> nn.Module:
    """quantize_model with a QuantConfig (all options, e.g. blocksize and int8_threshold)."""
    import_bitsandbytes()
    _refuse_adapters_and_quantized(model)
    paths, kept = plan_quantization(model, config)
    for path in paths:
        set_submodule(model, path, quantize_linear(model.get_submodule(path), config))
    return finish_quantization(model, config, paths, kept)


def plan_quantization(model: nn.Module, config: QuantConfig) -> tuple[list[str], list[str]]:
    """(paths of the linear layers to quantize, layers kept in full precision for bitsandbytes' CPU kernel).

    Reads only module types and shapes, so it works on a model whose weights are still on the meta device (the
    streaming loader, hf/stream_load.py, plans before it reads a single weight)."""
    skip = list(DEFAULT_SKIP if config.skip_modules is None else config.skip_modules)
    head = _output_head(model)
    shared = _shared_weights(model)
    paths: list[str] = []
    kept: list[str] = []
    for path, module in list(model.named_modules()):
        # exact type: nn.Linear subclasses (e.g. MultiheadAttention's out_proj) are read by weight elsewhere
        if type(module) is not nn.Linear or module is head or id(module.weight) in shared:
            continue
        if any(path == s or path.endswith("." + s) for s in skip):
            continue
        device = module.weight.device if module.weight.device.type != "meta" else torch.device("cpu")
        if config.is_4bit and cpu_4bit_kernel_is_wrong(module.in_features, config.blocksize, device):
            kept.append(f"{path} ({module.in_features} inputs)")
            continue
        paths.append(path)
    if not paths:
        why = f"; kept for the CPU kernel: {kept[:3]}" if kept else ""
        raise ConfigError(f"quantize_model found no nn.Linear layer to quantize (skip_modules={skip}{why})")
    return paths, kept


def finish_quantization(model: nn.Module, config: QuantConfig, done: list[str], kept: list[str]) -> nn.Module:
    """Record the config on a model whose planned layers are now quantized, and warn about the kept ones."""
    if kept:
        warnings.warn(
            f"kept {len(kept)} linear layer(s) in full precision, e.g. {kept[:3]}: bitsandbytes' CPU kernel computes "
            f"wrong 4-bit weights when in_features is not a multiple of blocksize={config.blocksize}",
            stacklevel=3,
        )
    model.__dict__[QUANT_ATTR] = config
    prepare_optional_types(model)  # registers the LoRA wrappers for bitsandbytes' layers (layers/quantized.py)
    return model


def quantize_linear(linear: nn.Linear, config: QuantConfig) -> nn.Module:
    """A bitsandbytes layer holding `linear`'s weight, quantized; the bias (full precision) is shared."""
    bnb = import_bitsandbytes()
    device = linear.weight.device
    has_bias = linear.bias is not None
    # built on the meta device: the layer's own random init would be thrown away anyway
    if config.is_4bit:
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=has_bias, compute_dtype=config.compute_dtype,
            compress_statistics=config.double_quant, quant_type=config.method, device="meta",
        )
        layer.weight = bnb.nn.Params4bit(
            linear.weight.data, requires_grad=False, blocksize=config.blocksize,
            compress_statistics=config.double_quant, quant_type=config.method, module=layer,
        )._quantize(device)
    else:
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False,
            threshold=config.int8_threshold, device="meta",
        )
        int8 = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
        layer.weight = int8._quantize(device)
    if has_bias:
        layer.bias = linear.bias
    layer.train(linear.training)
    return prepare_layer(layer)


def _refuse_adapters_and_quantized(model: nn.Module) -> None:
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer):
            raise ConfigError(
                f"the model already has LoRA adapters (e.g. at {path}); quantize the base model first, then add "
                "or load adapters (an adapter file loads onto the quantized base unchanged)"
            )
        if is_quantized(module):
            raise ConfigError(
                f"the model is already quantized ({path} is a {type(module).__name__}, e.g. loaded with "
                "BitsAndBytesConfig); add adapters to it directly"
            )


def _output_head(model: nn.Module) -> nn.Module | None:
    get_head = getattr(model, "get_output_embeddings", None)
    return get_head() if callable(get_head) else None


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of weights used by more than one module (tied): quantizing one copy would untie them."""
    seen: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, LoraLayer):  # its .weight is its base layer's: not a second user
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            seen[id(weight)] = seen.get(id(weight), 0) + 1
    return {key for key, n in seen.items() if n > 1}


# -- reading a quantized model -----------------------------------------------------------------------------------
def quantization_of(model: nn.Module) -> QuantConfig | None:
    """How the model is quantized: the recorded QuantConfig, or one read off its layers (e.g. a model that
    transformers loaded with BitsAndBytesConfig); None for a full-precision model."""
    layers = quantized_layers(model)
    if not layers:
        return None
    if QUANT_ATTR in model.__dict__:
        return model.__dict__[QUANT_ATTR]
    layer = layers[0][1]
    if not is_4bit(layer):
        return QuantConfig(method="int8", int8_threshold=float(layer.state.threshold))
    weight = layer.weight
    compute = layer.compute_dtype if layer.compute_dtype is not None else torch.float32
    return QuantConfig(method=weight.quant_type, compute_dtype=compute, double_quant=bool(weight.compress_statistics),
                       blocksize=int(weight.blocksize))


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every bitsandbytes linear layer (also inside LoRA wrappers) by an exact nn.Linear; in place."""
    for path, layer in quantized_layers(model):
        set_submodule(model, path, dequantize_linear(layer, dtype))
    model.__dict__.pop(QUANT_ATTR, None)
    return model


def quantized_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes, parameters) of the quantized weights: packed data plus every quantization statistic."""
    total_bytes = total_params = 0
    for _, layer in quantized_layers(model):
        weight = layer.weight
        total_bytes += weight.numel() * weight.element_size()
        if is_4bit(layer):
            tensors = [v for v in weight.quant_state.as_dict(packed=True).values() if isinstance(v, torch.Tensor)]
            total_params += math.prod(weight.quant_state.shape)
        else:
            tensors = [weight.SCB if weight.SCB is not None else layer.state.SCB]
            total_params += weight.numel()
        total_bytes += sum(t.numel() * t.element_size() for t in tensors)
    return total_bytes, total_params
