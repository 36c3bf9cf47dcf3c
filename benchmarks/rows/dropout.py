"""Dropout row: LoRA training throughput with lora_dropout=0.05 over lora_dropout=0, in each library.

With dropout on, the two libraries draw different masks (lorakit samples the dropped positions, PEFT a dense
mask), so their training losses cannot match step for step. The checks: outputs agree with dropout off
(eval mode), and the lorakit dropout model's training loss differs from its dropout-free twin (the dropout
runs). That each lorakit draw is an exact dropout is tests/layers/test_fast_paths.py's job.
"""

from __future__ import annotations

import torch

from benchmarks import models
from benchmarks.harness import Row, Settings, interleave, judge
from benchmarks.rows.common import assert_same_logits, describe, own_loss, train_setup, train_step

NAME = "LoRA training throughput, dropout 0.05 / dropout 0"
RATE = 0.05


def run(settings: Settings) -> list[Row]:
    spec, batch, seq = train_setup(settings)
    base = models.build(spec)
    ids = models.token_ids(spec, batch, seq)
    setup = describe(spec, torch.float32, batch, seq)

    lk0 = models.with_lorakit(base)
    lk_drop = models.with_lorakit(base, dropout=RATE)  # the same seed: the same A and B as lk0
    pf0 = models.with_peft(base, lk0)
    pf_drop = models.with_peft(base, lk_drop, dropout=RATE)
    for a, b, what in ((lk0, lk_drop, "lorakit dropout 0 vs 0.05 (eval)"), (lk_drop, pf_drop, "dropout 0.05 (eval)"),
                       (lk0, pf0, "dropout 0 (eval)")):
        assert_same_logits(a.eval(), b.eval(), ids, what)
    if _train_loss(lk_drop, ids) == _train_loss(lk0, ids):
        raise AssertionError("lorakit with lora_dropout=0.05 gave the dropout-free loss: its dropout did not run")

    contenders = {"lk0": lk0, "lk_drop": lk_drop, "pf0": pf0, "pf_drop": pf_drop}
    steps = {name: train_step(model, ids, loss=own_loss(name)) for name, model in contenders.items()}
    samples = interleave(steps, settings.rounds, settings.clock)
    lk, pf = samples.ratio("lk0", "lk_drop"), samples.ratio("pf0", "pf_drop")  # time ratio = throughput ratio
    return [Row(NAME, setup, lk, pf, "1.000 (dropout adds no matmul)", ">= 0.95", judge(lk, lambda v: v >= 0.95),
                unit="ratio")]


def _train_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()
