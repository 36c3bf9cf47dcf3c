"""Training rows: LoRA training throughput lorakit / PEFT, and LoRA's speed-up over full fine-tuning.

Every contender runs the same step (forward, causal-LM loss, backward, AdamW) on the same 4 x 256 batch.
The throughput row races the steps users run: lorakit's with the loss `lorakit train` computes
(lorakit.train.loss), PEFT's with the model's own loss (what the Hugging Face Trainer computes); its note gives
the ratio with the model's loss in both. The speed-up row compares like with like: full fine-tuning and
lorakit, both on the model's own loss.
A fourth contender, the floor, is the frozen base doing only the work any LoRA step must do (forward, and
the backward through the blocks) with no adapter at all: PEFT's time over the floor's is the most any LoRA
implementation could gain over PEFT, so the throughput row prints it as its bound.
"""

from __future__ import annotations

import functools

import torch

from benchmarks import models
from benchmarks.harness import Row, Samples, Settings, fmt, interleave, judge
from benchmarks.rows.common import assert_same_losses, describe, frozen_floor, train_setup, train_step

THROUGHPUT = "LoRA training tokens/s, lorakit / PEFT"
SPEEDUP = "LoRA training speed-up over full fine-tuning"


def run(settings: Settings) -> list[Row]:
    spec, batch, seq = train_setup(settings)
    base = models.build(spec)
    ids = models.token_ids(spec, batch, seq)
    setup = describe(spec, torch.float32, batch, seq)
    make_lk = functools.partial(models.with_lorakit, base)
    assert_same_losses(make_lk, lambda: models.with_peft(base, make_lk()), ids, steps=3, what=f"LoRA training, {setup}")

    lk = make_lk()
    floor = frozen_floor(base)
    steps = {"full": train_step(models.full_finetune(base), ids), "floor": train_step(floor, ids),
             "floor_lk_loss": train_step(floor, ids, loss="lorakit"),
             "lorakit": train_step(lk, ids, loss="lorakit"), "lorakit_model_loss": train_step(lk, ids),
             "peft": train_step(models.with_peft(base, lk), ids)}
    samples = interleave(steps, settings.rounds, settings.clock)

    ceiling = samples.speedup("peft", "floor_lk_loss")  # the floor running the loss lorakit's step runs
    throughput = samples.speedup("peft", "lorakit")
    same_loss = samples.speedup("peft", "lorakit_model_loss")
    bound = models.train_speedup_bound(spec, 16, seq)
    # full fine-tuning runs the model's own loss: its speed-up is taken against lorakit on that same loss
    lk_speedup, pf_speedup = samples.speedup("full", "lorakit_model_loss"), samples.speedup("full", "peft")
    adapter_flops = models.lora_step_over_floor(spec, 16, seq)
    floor_note = (f"lorakit's step as `lorakit train` runs it (its chunked loss, lorakit.train.loss) against PEFT's "
                  f"as the Hugging Face Trainer runs it (the model's own loss); with the model's loss in both: "
                  f"{same_loss[0]:.3f} / {same_loss[1]:.3f}. Bound: the floor (no adapter work, lorakit's loss) / "
                  f"PEFT; with the model's loss {_ratio(samples.speedup('peft', 'floor'))}. The adapters' "
                  f"low-rank products as PEFT runs them add {100 * (adapter_flops - 1):.1f}% to the floor's FLOPs "
                  "(lorakit's per-call merged weights skip part of it); "
                  f"lorakit over the floor, same loss: {_pct(samples.ratio('lorakit', 'floor_lk_loss'))} "
                  f"(model's loss: {_pct(samples.ratio('lorakit_model_loss', 'floor'))}), "
                  f"PEFT: {_pct(samples.ratio('peft', 'floor'))}. {_faults(samples)}")
    return [
        Row(THROUGHPUT, setup, throughput, (1.0, 1.0), f"<= {ceiling[0]:.3f} (floor)", ">= 1.15",
            judge(throughput, lambda v: v >= 1.15), unit="ratio", note=floor_note),
        Row(SPEEDUP, setup, lk_speedup, pf_speedup, f"{bound:.3f}x (FLOPs)", f">= {0.95 * bound:.3f}x (95%)",
            judge(lk_speedup, lambda v: v >= 0.95 * bound), unit="ratio",
            note=f"lorakit at {100 * lk_speedup[0] / bound:.0f}% of the bound, "
                 f"PEFT at {100 * pf_speedup[0] / bound:.0f}%"),
    ]


FAULT_NAMES = {"lorakit": "lorakit", "floor_lk_loss": "floor", "peft": "PEFT", "full": "full fine-tuning"}


def _faults(samples: Samples) -> str:
    """The median minor page faults per step of each contender: fresh pages cost time the FLOPs don't show."""
    counts = ", ".join(f"{label} {samples.median_faults(name)}" for name, label in FAULT_NAMES.items())
    return f"Minor page faults per step (median): {counts}"


def _ratio(pair: tuple[float, float]) -> str:
    return fmt(pair, "ratio")


def _pct(pair: tuple[float, float]) -> str:
    return fmt(pair, "overhead")
