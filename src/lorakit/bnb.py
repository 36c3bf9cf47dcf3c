"""The one place lorakit reaches into bitsandbytes: importing it, telling its layer types apart, reading and
writing one quantized layer's weight, and two CPU bugs of bitsandbytes 0.50 (both found by comparing with a
plain-torch reference). Below both `lorakit.quantize` (packing a model) and `layers/quantized.py` (LoRA over a
packed layer), which each import it; bitsandbytes itself is imported on first use only (an optional dependency).

1. On CPUs with AVX512-BF16, a Linear4bit run in eval mode without grad repacks its weight in place into a layout
   with bf16 block scales and computes in bf16, whatever the compute dtype; `dequantize_4bit` on that layout
   returns wrong values, and layers with in_features < blocksize or out_features % 32 != 0 crash.
   `prepare_layer` switches that path off, so a layer computes exactly `x @ dequantize(W).T`.
2. The native CPU dequantize kernel reads the wrong block scales when in_features is not a multiple of the
   blocksize (silently wrong weights, in the forward too). `cpu_4bit_kernel_is_wrong` probes for it once;
   quantize_model keeps such layers in full precision.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings

import torch
from torch import nn

from lorakit.errors import ConfigError


# -- bitsandbytes, imported on first use ---------------------------------------------------------------------------
class _DropMessages(logging.Filter):
    """bitsandbytes log lines that are expected on CPU and ask nothing of a lorakit user (the optional hub kernel
    for the CPU inference layout lorakit switches off; the fp16 cast of LLM.int8's inputs, once per matmul)."""

    NOISE = ("Failed to load CPU gemm_4bit_forward", "inputs will be cast from")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(part in str(record.msg) for part in self.NOISE)


def import_bitsandbytes():
    """The bitsandbytes module, or a ConfigError naming the install command."""
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages())
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ConfigError(
            f"quantization needs bitsandbytes, which is not installed ({exc}); "
            "pip install bitsandbytes   (or: pip install 'lorakit[qlora]')"
        ) from None
    return bitsandbytes


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes 4-bit or 8-bit linear layer (never imports bitsandbytes for other modules)."""
    if not type(module).__module__.startswith("bitsandbytes"):
        return False
    bnb = import_bitsandbytes()
    return isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def is_4bit(module: nn.Module) -> bool:
    return is_quantized(module) and isinstance(module, import_bitsandbytes().nn.Linear4bit)


# -- one quantized layer's weight ---------------------------------------------------------------------------------
def prepare_layer(layer: nn.Module) -> nn.Module:
    """Exact CPU compute path (bug 1 above) and a parameter count that sees the packed weights. Idempotent."""
    if is_4bit(layer):
        _unpack_cpu_layout(layer)
        layer.support_avx512bf16_for_cpu = False
        weight = layer.weight
        weight.lorakit_pack_factor = math.prod(weight.quant_state.shape) // max(weight.numel(), 1)
    return layer


def _unpack_cpu_layout(layer: nn.Module) -> None:
    """Undo bitsandbytes' CPU inference layout if a forward already applied it (lossy once, then exact)."""
    state = layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(layer.weight.data, state)
        layer.quant_state = layer.weight.quant_state


def dequantize_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a quantized layer computes with, (out, in) in float32 (a plain Linear: its weight)."""
    if not is_quantized(layer):
        return layer.weight.detach().float()
    bnb = import_bitsandbytes()
    if is_4bit(layer):
        _unpack_cpu_layout(layer)
        weight = layer.weight
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    # int8: rows of CB scaled by SCB/127, bitsandbytes' own arithmetic. Before the first forward CB/SCB sit on the
    # weight; the forward moves them to layer.state.
    cb = layer.weight.CB if layer.weight.CB is not None else layer.state.CB
    scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    if cb is None or scb is None:
        raise ConfigError("this Linear8bitLt holds no int8 weight (has_fp16_weights=True?); it cannot be dequantized")
    return cb.float() * scb.float().unsqueeze(1).mul(1.0 / 127.0)


def requantize_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    """Store `weight` (out, in) into a quantized layer with its own settings (a plain Linear: copied in)."""
    if not is_quantized(layer):
        with torch.no_grad():
            layer.weight.copy_(weight.to(layer.weight.dtype))
        return
    bnb = import_bitsandbytes()
    param = layer.weight
    if is_4bit(layer):
        _unpack_cpu_layout(layer)
        data, state = bnb.functional.quantize_4bit(
            weight.to(device=param.device, dtype=param.quant_state.dtype).contiguous(), blocksize=param.blocksize,
            compress_statistics=param.compress_statistics, quant_type=param.quant_type,
            quant_storage=param.quant_storage,
        )
        param.data, param.quant_state, layer.quant_state = data, state, state
        return
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(weight.to(device=param.device, dtype=torch.float16))
    param.data, param.CB, param.SCB = cb, cb, scb  # the next forward moves CB/SCB into layer.state


def dequantize_linear(layer: nn.Module, dtype: torch.dtype = torch.float32, share_bias: bool = False) -> nn.Linear:
    """A plain nn.Linear with the weight a quantized layer computes with (exact in float32).

    `share_bias`: the new layer uses the quantized layer's bias Parameter itself (a temporary dense view)."""
    weight = dequantize_weight(layer)
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=layer.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if layer.bias is not None:
        bias = layer.bias.detach().to(dtype)
        linear.bias = layer.bias if share_bias else nn.Parameter(bias, requires_grad=layer.bias.requires_grad)
    linear.train(layer.training)
    return linear


# -- bug 2: probe the CPU dequantize kernel once ------------------------------------------------------------------
def cpu_4bit_kernel_is_wrong(in_features: int, blocksize: int, device: torch.device) -> bool:
    """True where bitsandbytes' CPU kernel would dequantize this layer's 4-bit weight wrongly."""
    return device.type == "cpu" and in_features % blocksize != 0 and not _cpu_kernel_reads_partial_blocks()


@functools.cache
def _cpu_kernel_reads_partial_blocks() -> bool:
    """Rows of 96 values with blocks of 64: does the native dequantize agree with a plain-torch one?"""
    bnb = import_bitsandbytes()
    weight = torch.linspace(-1.0, 1.0, 2 * 96).reshape(2, 96)  # blocks with different absmax
    data, state = bnb.functional.quantize_4bit(weight, blocksize=64, compress_statistics=False, quant_type="nf4")
    return torch.equal(bnb.functional.dequantize_4bit(data, state), _plain_dequantize_4bit(data, state))


def _plain_dequantize_4bit(data: torch.Tensor, state) -> torch.Tensor:
    """code[nibble] * absmax[block] over the flattened weight (first value in the high nibble), no double quant."""
    count = math.prod(state.shape)
    packed = data.reshape(-1).view(torch.uint8)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:count].long()
    scales = state.absmax.float().repeat_interleave(state.blocksize)[:count]
    return (state.code[codes] * scales).reshape(state.shape).to(state.dtype)



# -- a whole model ---------------------------------------------------------------------------------------------
def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, layer) for every bitsandbytes linear layer, including those inside LoRA wrappers."""
    return [(path, module) for path, module in model.named_modules() if is_quantized(module)]


def prepare_model(model: nn.Module) -> nn.Module:
    """Put every bitsandbytes layer on the exact CPU path and make count_parameters count it (see
    layers/quantized.py), e.g. for a model transformers loaded with BitsAndBytesConfig. add_adapter and
    load_adapter call it; call it yourself before running such a model in eval mode on CPU. Warns about layers
    bitsandbytes' CPU kernel computes wrongly (quantize_model keeps those in full precision instead)."""
    wrong = []
    for path, layer in quantized_layers(model):
        prepare_layer(layer)
        if is_4bit(layer) and cpu_4bit_kernel_is_wrong(layer.in_features, layer.weight.blocksize, layer.weight.device):
            wrong.append(path)
    if wrong and not model.__dict__.get("_lorakit_warned_cpu_4bit"):
        model.__dict__["_lorakit_warned_cpu_4bit"] = True
        warnings.warn(
            f"{len(wrong)} 4-bit layer(s), e.g. {wrong[:3]}, compute with wrong weights on CPU: bitsandbytes' CPU "
            "kernel mis-reads the block scales when in_features is not a multiple of the blocksize. Load the model "
            "in full precision and use lorakit.quantize.quantize_model, which keeps such layers unquantized",
            stacklevel=2,
        )
    return model
