"""DoRA rows: DoRA training step time / LoRA step time, and the peak training memory ratio, in each library.

Pending until lorakit supports `use_dora` (variants/dora.py). Before timing: lorakit's DoRA and PEFT's, with the
same weights (magnitude included), give the same outputs and the same losses over a few training steps.
"""

from __future__ import annotations

import functools

import torch

from benchmarks import models
from benchmarks.harness import Row, Settings, interleave, judge, pending
from benchmarks.rows.common import (
    assert_same_logits,
    assert_same_losses,
    describe,
    own_loss,
    train_setup,
    train_step,
)
from benchmarks.rows.memory import training_ratio

TIME = "DoRA training step time / LoRA step time"
MEMORY = "DoRA training peak memory / LoRA"


def dora_missing() -> str | None:
    """Why lorakit cannot run DoRA here, or None if it can."""
    try:
        models.with_lorakit(models.build(models.TINY), use_dora=True)
    except Exception as exc:  # any failure means the row cannot run yet
        return f"lorakit DoRA not available yet ({type(exc).__name__}: {str(exc)[:80]})"
    return None


def run(settings: Settings) -> list[Row]:
    spec, batch, seq = train_setup(settings)
    setup = describe(spec, torch.float32, batch, seq)
    why = dora_missing()
    if why is not None:
        return [pending(TIME, setup, "1.00 (low-rank norm)", "<= 1.10", why),
                pending(MEMORY, setup, "-", "<= 1.10", why)]

    base = models.build(spec)
    ids = models.token_ids(spec, batch, seq)
    make_dora = functools.partial(models.with_lorakit, base, use_dora=True)
    dora = make_dora()
    assert_same_logits(dora, models.with_peft(base, dora, use_dora=True), ids, f"DoRA forward, {setup}")
    assert_same_losses(make_dora, lambda: models.with_peft(base, make_dora(), use_dora=True), ids, steps=3,
                       what=f"DoRA training, {setup}")

    lora = models.with_lorakit(base)
    contenders = {"lk_lora": lora, "lk_dora": dora, "pf_lora": models.with_peft(base, lora),
                  "pf_dora": models.with_peft(base, dora, use_dora=True)}
    steps = {n: train_step(m, ids, loss=own_loss(n)) for n, m in contenders.items()}
    samples = interleave(steps, settings.rounds, settings.clock)
    lk, pf = samples.ratio("lk_dora", "lk_lora"), samples.ratio("pf_dora", "pf_lora")
    rows = [Row(TIME, setup, lk, pf, "~1.00 (the norm costs O(r) per weight)", "<= 1.10",
                judge(lk, lambda v: v <= 1.10), unit="ratio")]

    if settings.quick:  # four fresh interpreters cost more than the whole quick run
        rows.append(pending(MEMORY, setup, "-", "<= 1.10", "measured in full mode only"))
        return rows
    lk_mem, lk_note = training_ratio("lorakit-dora", "lorakit-lora", settings.quick)
    pf_mem, pf_note = training_ratio("peft-dora", "peft-lora", settings.quick)
    rows.append(Row(MEMORY, setup + ", one process each", lk_mem, pf_mem, "-", "<= 1.10",
                    "yes" if lk_mem[0] <= 1.10 else "no", unit="single", note=f"lorakit {lk_note}; PEFT {pf_note}"))
    return rows
