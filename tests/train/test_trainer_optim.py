"""Optimizer groups (LoRA+: lora_B at ratio x lr; the head at head_lr; no decay on 1-d tensors) and the lr
schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

import lorakit
from lorakit.train.config import TrainingConfig
from lorakit.train.optim import build_optimizer, build_scheduler, lr_factor
from tests.helpers import tiny_bert_seq_cls


def adapted_bert():
    model = tiny_bert_seq_cls()
    cfg = lorakit.LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"], bias="lora_only")
    return lorakit.add_adapter(model, cfg)


def lr_and_decay_by_name(model, optimizer) -> dict[str, tuple[float, float]]:
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def test_loraplus_groups_give_lora_b_ratio_times_the_lr():
    model = adapted_bert()
    cfg = TrainingConfig(lr=1e-4, loraplus_lr_ratio=16.0, head_lr=5e-3, weight_decay=0.1)
    table = lr_and_decay_by_name(model, build_optimizer(model, cfg))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(table) == trainable  # every trainable tensor exactly once, nothing frozen
    for name, (lr, decay) in table.items():
        if ".modules_to_save." in name:
            expected_lr = 5e-3
        elif ".lora_B." in name:
            expected_lr = 1.6e-3
        else:  # lora_A, and the biases of adapted layers (bias="lora_only")
            expected_lr = 1e-4
        assert lr == pytest.approx(expected_lr), name
        assert decay == (0.0 if name.endswith("bias") else 0.1), name
    assert any(".lora_B." in n for n in table) and any(".lora_A." in n for n in table)


def test_without_loraplus_all_adapter_tensors_share_the_lr():
    model = adapted_bert()
    table = lr_and_decay_by_name(model, build_optimizer(model, TrainingConfig(lr=2e-4)))
    assert {lr for n, (lr, _) in table.items() if "lora_" in n} == {2e-4}
    assert {lr for n, (lr, _) in table.items() if "modules_to_save" in n} == {2e-4}  # head_lr None: lr


@pytest.mark.parametrize(("step", "kind", "expected"), [
    (0, "cosine", 1 / 5), (3, "cosine", 4 / 5),  # warmup: (step + 1) / (warmup + 1)
    (4, "cosine", 1.0), (9, "cosine", 0.5), (14, "cosine", 0.0),  # (step - 4) / 10 of the way: cos
    (9, "linear", 0.5), (14, "linear", 0.0), (12, "linear", 0.2),
    (9, "constant", 1.0), (14, "constant", 1.0),
])
def test_lr_factor_hand_values(step, kind, expected):
    assert lr_factor(step, total=14, warmup=4, kind=kind) == pytest.approx(expected)


def test_min_lr_ratio_is_the_floor():
    assert lr_factor(14, 14, 4, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(9, 14, 4, "cosine", min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)


def test_scheduler_applies_the_factor_to_every_group():
    model = adapted_bert()
    cfg = TrainingConfig(lr=1e-3, loraplus_lr_ratio=4.0, warmup_steps=2, scheduler="cosine")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=6)
    for step in range(6):
        factor = lr_factor(step, 6, 2, "cosine")
        lrs = sorted(g["lr"] for g in optimizer.param_groups)
        assert lrs[0] == pytest.approx(1e-3 * factor) and lrs[-1] == pytest.approx(4e-3 * factor)
        optimizer.step()
        scheduler.step()
    assert math.isclose(scheduler.get_last_lr()[0], 0.0, abs_tol=1e-12)


def test_a_model_without_trainable_parameters_is_refused():
    with pytest.raises(RuntimeError, match="no trainable parameters"):
        build_optimizer(torch.nn.Linear(2, 2).requires_grad_(False), TrainingConfig())
