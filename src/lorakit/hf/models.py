"""The base model for a task, loaded from a local directory, a GGUF file or a Hub id's snapshot (hf/paths.py resolves
model.path to one of the first two): Auto class, dtype, labels, device, quantization, activation checkpointing.
The task classes here are what a model family needs for `lorakit train`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers
from torch import nn

from lorakit.errors import ConfigError
from lorakit.hf.checkpointing import enable_checkpointing
from lorakit.hf.classifier import MeanPoolClassifier
from lorakit.hf.config import ModelConfig
from lorakit.hf.gguf import is_gguf, load_dense
from lorakit.hf.quantized import quantize

logger = logging.getLogger("lorakit")
AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "seq2seq": "AutoModelForSeq2SeqLM",
}


def from_pretrained(auto_class, path: Path, **kwargs) -> nn.Module:
    """auto_class.from_pretrained(path, **kwargs) for a model directory or a GGUF file (dequantized: hf/gguf.py).
    Every command that loads a base model from model.path goes through here."""
    if is_gguf(path):
        return load_dense(auto_class, Path(path), **kwargs)
    return auto_class.from_pretrained(str(path), **kwargs)


def load_model(cfg: ModelConfig, path: Path, labels: list[str] | None = None, pad_token_id: int | None = None,
               device: torch.device | None = None) -> nn.Module:
    """The base model for cfg.task (classification heads sized for `labels`), on `device`, optionally quantized."""
    dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    common: dict = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        common["attn_implementation"] = cfg.attn_implementation
    kwargs = dict(common)
    quantized = False  # True when loaded quantized shard by shard (hf/stream_load.py)
    if cfg.task == "seq-cls":
        if not labels:
            raise ConfigError("model.task='seq-cls' needs class labels; use a classification dataset")
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={name: i for i, name in enumerate(labels)})
    try:
        if cfg.pooling == "mean":
            encoder = from_pretrained(transformers.AutoModel, path, **common)
            model = MeanPoolClassifier(encoder, len(labels)).to(encoder.dtype)
        else:
            auto = getattr(transformers, AUTO_CLASSES[cfg.task])
            model = _load_quantized(auto, cfg, path, device, kwargs) if cfg.quantization else None
            if model is not None:
                quantized = True
            else:
                model = from_pretrained(auto, path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"could not load {str(path)!r} as a {cfg.task} model ({type(exc).__name__}: {exc}); check model.path "
            f"and model.task (one of {list(AUTO_CLASSES)})"
        ) from None
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id  # sequence classification of causal LMs finds the last token
    if device is not None and not quantized:
        model.to(device)
    if cfg.quantization is not None and not quantized:
        model = quantize(model, cfg)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def _load_quantized(auto_class, cfg: ModelConfig, path: Path, device: torch.device | None,
                    kwargs: dict) -> nn.Module | None:
    """The base quantized while it loads, shard by shard (QLoRA on a model larger than memory in full precision);
    None where that cannot be exact, and the whole model is loaded then quantized (the reason is logged)."""
    if is_gguf(path):
        return None  # a GGUF file is dequantized by transformers as a whole (hf/gguf.py)
    from lorakit.hf.stream_load import load_quantized
    from lorakit.quantize import QuantConfig

    quant = QuantConfig(method=cfg.quantization, compute_dtype=cfg.compute_dtype, double_quant=cfg.double_quant)
    kwargs = dict(kwargs)
    dtype = kwargs.pop("dtype")
    model, why = load_quantized(auto_class, Path(path), quant, dtype, device, **kwargs)
    if model is None:
        logger.info("model.quantization=%s: loading the whole model, then quantizing (%s)", cfg.quantization, why)
    return model
