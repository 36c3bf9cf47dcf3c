"""How far a merged model is from the adapter it merged: the merge equivalence report.

On a full-precision base, merging is exact up to float rounding. On a quantized base it is not: W + s·B·A must
either be kept in 16/32-bit (exact, but the merged model is full size) or requantized (small, but the update is
rounded onto the quantization grid). `merge_with_report` merges and measures on probe inputs:

    merge equivalence: adapter on nf4 base  vs  merged, dequantized to float32 (64 probe positions)
      max |Δlogit|   mean |Δlogit|   mean KL      max KL
      4.77e-07       6.01e-08        1.2e-14      8.4e-14

KL is KL(adapter ‖ merged) of the softmax over the last logit dimension, per probe position, in nats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters import merge_and_unload
from lorakit.errors import ConfigError
from lorakit.quantize import QuantConfig, dequantize_model, quantization_of

MODES = ("dequantize", "requantize")


@dataclass(frozen=True)
class MergeReport:
    """Logit differences between two forward passes over the same probe inputs."""

    label: str  # what was compared with what
    positions: int  # probe positions (rows of logits) compared
    max_abs_diff: float  # max |Δlogit| over every position and class
    mean_abs_diff: float  # mean |Δlogit|
    kl_mean: float  # mean over positions of KL(reference ‖ candidate), nats
    kl_max: float  # worst position

    def table(self) -> str:
        head = f"merge equivalence: {self.label} ({self.positions} probe positions)"
        cols = f"  {'max |Δlogit|':<14} {'mean |Δlogit|':<15} {'mean KL':<12} {'max KL':<12}"
        vals = f"  {self.max_abs_diff:<14.3g} {self.mean_abs_diff:<15.3g} {self.kl_mean:<12.3g} {self.kl_max:<12.3g}"
        return "\n".join([head, cols, vals])

    def __str__(self) -> str:
        return self.table()


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor, label: str = "") -> MergeReport:
    """The report for two logit tensors of the same shape (..., classes); every leading index is a position."""
    if reference.shape != candidate.shape:
        raise ConfigError(f"logit shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    # float64: the KL of near-identical distributions is ~Δ², far below float32's rounding of log_softmax
    ref = reference.detach().double().reshape(-1, reference.shape[-1])  # (positions, classes)
    cand = candidate.detach().double().reshape(-1, candidate.shape[-1])
    diff = (ref - cand).abs()
    log_p, log_q = F.log_softmax(ref, dim=-1), F.log_softmax(cand, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).clamp_min(0)  # (positions,)
    return MergeReport(
        label=label, positions=ref.shape[0], max_abs_diff=diff.max().item(), mean_abs_diff=diff.mean().item(),
        kl_mean=kl.mean().item(), kl_max=kl.max().item(),
    )


# -- probes and logits ---------------------------------------------------------------------------------------
def default_probes(model: nn.Module, batch: int = 4, seq_len: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids over the model's vocabulary (reproducible), for models whose config has vocab_size."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab:
        raise ConfigError(
            "cannot make probe inputs for this model (no config.vocab_size); pass probes=, e.g. a batch of "
            "tokenized examples as a dict of tensors or a tensor of input ids"
        )
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids.to(device)}


def model_logits(model: nn.Module, probes: Any) -> torch.Tensor:
    """The model's logits on probes (a dict of tensors, or a tensor) in eval mode, without grad.

    With an attention_mask in the probes, padded positions are dropped (returned as (positions, classes))."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**probes) if isinstance(probes, dict) else model(probes)
    finally:
        model.train(was_training)
    logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
    mask = probes.get("attention_mask") if isinstance(probes, dict) else None
    if mask is not None and logits.dim() == 3 and logits.shape[:2] == mask.shape:
        logits = logits[mask.bool()]
    return logits.float()


# -- merge and measure ---------------------------------------------------------------------------------------
def merge_with_report(
    model: nn.Module,
    probes: Any = None,
    mode: str = "dequantize",
    dtype: torch.dtype = torch.float32,
    adapter_names: list[str] | None = None,
    safe_merge: bool = False,
    verbose: bool = True,
) -> tuple[nn.Module, MergeReport]:
    """Merge the adapters and unload them, then report how far the merged model is from the adapter model.

    mode "dequantize": quantized layers become nn.Linear (dequantized exactly, in float32), the adapters merge
    into them exactly, and with a 16-bit `dtype` the whole model is then cast to it (save in 16/32-bit).
    mode "requantize": the adapters merge into each quantized layer, which is requantized in its own format (a
    small model; the report shows the rounding). On a full-precision base both modes are a plain merge.
    Prints the report unless verbose=False; returns (merged model, report)."""
    if mode not in MODES:
        raise ConfigError(f"merge mode {mode!r} is not supported; choose one of {list(MODES)}")
    probes = default_probes(model) if probes is None else probes
    quant = quantization_of(model)
    reference = model_logits(model, probes)  # the adapter on the (quantized) base
    if mode == "dequantize" and quant is not None:
        dequantize_model(model, torch.float32)
        model.float()  # a 16-bit base's other weights too: the merge and its report then run in float32 throughout
    merged = merge_and_unload(model, adapter_names, safe_merge)
    if mode == "dequantize" and dtype != torch.float32:
        merged = merged.to(dtype)
    report = compare_logits(reference, model_logits(merged, probes), _label(quant, mode, dtype))
    if verbose:
        print(report.table())
    return merged, report


def _label(quant: QuantConfig | None, mode: str, dtype: torch.dtype) -> str:
    base = "full-precision base" if quant is None else f"{quant.method} base"
    if quant is not None and mode == "requantize":
        target = f"merged, requantized to {quant.method}"
    else:
        target = f"merged, {str(dtype).removeprefix('torch.')}"
    return f"adapter on {base}  vs  {target}"
