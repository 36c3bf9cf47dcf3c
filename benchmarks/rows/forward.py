"""Inference rows: unmerged LoRA forward / base forward and merged / base (r16 on every linear of the blocks)."""

from __future__ import annotations

import torch

import lorakit
from benchmarks import models
from benchmarks.harness import Row, Settings, bf16_supported, interleave, judge
from benchmarks.rows.common import assert_same_logits, describe, infer_setup

UNMERGED = "unmerged LoRA forward / base forward"
MERGED = "merged LoRA forward / base forward"
BF16_NOTE = ("both libraries keep a bf16 base's adapters in fp32: their products run at fp32 speed (about 4x slower "
             "per FLOP than bf16 matmuls on this CPU) after a cast of x, which the FLOP bound does not count")


def cases(settings: Settings) -> list[tuple[models.LlamaSpec, torch.dtype]]:
    if settings.quick:
        return [(models.TINY, torch.float32)]
    out = [(models.SMALL, torch.float32), (models.WIDE, torch.float32)]
    if bf16_supported():
        out.append((models.SMALL, torch.bfloat16))
    return out


def run(settings: Settings) -> list[Row]:
    rows: list[Row] = []
    _, batch, seq = infer_setup(settings)
    for spec, dtype in cases(settings):
        rows += forward_rows(settings, spec, dtype, batch, seq)
    return rows


def forward_rows(settings: Settings, spec: models.LlamaSpec, dtype: torch.dtype, batch: int, seq: int) -> list[Row]:
    base = models.build(spec, dtype=dtype)
    lk = models.with_lorakit(base)
    pf = models.with_peft(base, lk)
    ids = models.token_ids(spec, batch, seq)
    setup = describe(spec, dtype, batch, seq)
    assert_same_logits(lk, pf, ids, f"unmerged forward, {setup}")

    with torch.inference_mode():
        unmerged = interleave(
            {"base": lambda: base(ids), "lorakit": lambda: lk(ids), "peft": lambda: pf(ids)},
            settings.rounds, settings.clock,
        )
    bound = models.forward_bound(spec, 16, seq)
    rows = [_row(UNMERGED, setup, unmerged, f"+{100 * bound:.1f}% (FLOPs)", "<= +5%", 1.05)]
    if dtype != torch.float32:
        rows[0].note = BF16_NOTE
        return rows  # merging rounds the weights into bf16, differently in each library: fp32 only

    lorakit.merge_adapter(lk)
    pf.merge_adapter()
    assert_same_logits(lk, pf, ids, f"merged forward, {setup}")
    with torch.inference_mode():
        merged = interleave(
            {"base": lambda: base(ids), "lorakit": lambda: lk(ids), "peft": lambda: pf(ids)},
            settings.rounds, settings.clock,
        )
    rows.append(_row(MERGED, setup, merged, "+0.0% (same matmuls)", "<= +1%", 1.01))
    return rows


def _row(name: str, setup: str, samples, bound: str, target: str, limit: float) -> Row:
    lk, pf = samples.ratio("lorakit", "base"), samples.ratio("peft", "base")
    return Row(name, setup, lk, pf, bound, target, judge(lk, lambda v: v <= limit))
