"""model.quantization: the base packed by lorakit.quantize (QLoRA) right after loading."""

from __future__ import annotations

import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.hf.config import ModelConfig


def quantize(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    try:
        # function-level on purpose: a slim installation may lack lorakit.quantize, whose layers need the optional
        # bitsandbytes; that is a config error naming the fix (tests/train/test_config.py), not an import error
        from lorakit.quantize import quantize_model
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("lorakit"):
            raise ConfigError(
                f"model.quantization={cfg.quantization!r} needs lorakit.quantize, which this lorakit installation "
                "lacks; set model.quantization=null"
            ) from None
        raise ConfigError(f"model.quantization={cfg.quantization!r} needs {exc.name}: pip install {exc.name}") from None
    return quantize_model(model, method=cfg.quantization, compute_dtype=getattr(torch, cfg.compute_dtype),
                          double_quant=cfg.double_quant)
