"""Inference rows: unmerged LoRA forward / base forward and merged / base (r16 on every linear of the blocks)."""

from __future__ import annotations

import torch

import lorakit
from benchmarks import models
from benchmarks.harness import Row, Settings, bf16_supported, interleave, judge, pending
from benchmarks.rows.common import assert_as_accurate, assert_same_logits, describe, infer_setup, mean_error

UNMERGED = "unmerged LoRA forward / base forward"
UNMERGED_16 = "unmerged LoRA forward / base forward, bf16 adapters (autocast_adapter_dtype=False)"
MERGED = "merged LoRA forward / base forward"
BF16_NOTE = ("the default in both libraries: a bf16 base's adapters in fp32, their products at fp32 speed (about 4x "
             "slower per FLOP than bf16 matmuls on this CPU) after a cast of x, which the FLOP bound does not count; "
             "the next row is the 16-bit option")


def cases(settings: Settings) -> list[tuple[models.LlamaSpec, torch.dtype]]:
    sixteen = [torch.bfloat16] if bf16_supported() else []
    if settings.quick:
        return [(models.TINY, dtype) for dtype in (torch.float32, *sixteen)]
    return [(models.SMALL, torch.float32), (models.WIDE, torch.float32)] + [(models.SMALL, d) for d in sixteen]


def run(settings: Settings) -> list[Row]:
    rows: list[Row] = []
    _, batch, seq = infer_setup(settings)
    for spec, dtype in cases(settings):
        rows += forward_rows(settings, spec, dtype, batch, seq)
    if not settings.quick and not bf16_supported():  # say so in the table rather than drop the rows silently
        setup = describe(models.SMALL, torch.bfloat16, batch, seq)
        bound = f"+{100 * models.forward_bound(models.SMALL, 16, seq):.1f}% (FLOPs)"
        why = "not measured: this CPU has no native bf16 matmul (avx512_bf16 / amx_bf16), so bf16 timings mean nothing"
        rows += [pending(name, setup, bound, "<= +5%", why) for name in (UNMERGED, UNMERGED_16)]
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
        rows.append(_sixteen_bit_row(settings, base, ids, setup, bound, mean_error(lk, ids)))
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


def _sixteen_bit_row(settings: Settings, base, ids: torch.Tensor, setup: str, bound: float, wide_error: float) -> Row:
    """Both libraries with their adapters in the base's bf16. Their roundings differ (lorakit adds s h B^T into
    the base output and rounds once; PEFT rounds each product), so equality is checked against the exact
    outputs of the same bf16 weights computed in fp32: lorakit may be no less accurate than PEFT."""
    lk = models.with_lorakit(base, autocast_adapter_dtype=False)
    pf = models.with_peft(base, lk, autocast_adapter_dtype=False)
    errors = assert_as_accurate(lk, pf, ids, f"unmerged forward with bf16 adapters, {setup}")
    with torch.inference_mode():
        samples = interleave(
            {"base": lambda: base(ids), "lorakit": lambda: lk(ids), "peft": lambda: pf(ids)},
            settings.rounds, settings.clock,
        )
    row = _row(UNMERGED_16, setup, samples, f"+{100 * bound:.1f}% (FLOPs)", "<= +5%", 1.05)
    row.note = (f"mean |logit error| against the same weights in fp32: lorakit {errors[0]:.5f}, PEFT {errors[1]:.5f} "
                f"(fp32 adapters, previous row: {wide_error:.5f})")
    return row
