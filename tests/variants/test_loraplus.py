"""LoRA+ (the trainer's loraplus_lr_ratio): lora_B learns ratio × faster than lora_A; everything else at lr."""

import torch

import lorakit
from lorakit.train.config import TrainingConfig
from lorakit.train.optim import build_optimizer, param_groups
from tests.helpers import tiny_llama, token_ids


def model_with_adapter(**lora):
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"],
                                                  init_lora_weights=False, **lora))
    return model


def test_default_is_plain_lora_and_the_papers_ratio_is_accepted() -> None:
    assert TrainingConfig().loraplus_lr_ratio == 1.0  # off unless asked for; docs/variants.md suggests 16
    assert TrainingConfig(loraplus_lr_ratio=16).loraplus_lr_ratio == 16


def test_b_gets_ratio_times_the_learning_rate() -> None:
    model = model_with_adapter(use_dora=True)
    groups = param_groups(model, TrainingConfig(lr=1e-3, loraplus_lr_ratio=16))
    lr_of = {name: g["lr"] for g in groups for name in g["param_names"]}
    assert lr_of, "no trainable parameters"
    for name, lr in lr_of.items():
        is_b = ".lora_B." in f".{name}" or ".lora_embedding_B." in f".{name}"
        assert lr == (16e-3 if is_b else 1e-3), name
    assert any("lora_embedding_B" in n for n in lr_of) and any("lora_magnitude_vector" in n for n in lr_of)


def test_first_adamw_step_moves_b_ratio_times_further() -> None:
    """AdamW's first step is lr · g / (|g| + eps) per weight: B's with ratio · lr, A's with lr."""
    model = model_with_adapter()
    optimizer = build_optimizer(model, TrainingConfig(lr=1e-4, loraplus_lr_ratio=16, weight_decay=0.0))
    layer = model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    a0, b0 = a.detach().clone(), b.detach().clone()
    ids = token_ids()
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    optimizer.step()
    eps = 1e-8
    # the step is a difference of nearby floats: allow a few ulps of the weights
    torch.testing.assert_close(a0 - a.detach(), 1e-4 * ga / (ga.abs() + eps), rtol=1e-3, atol=1e-9)
    torch.testing.assert_close(b0 - b.detach(), 16e-4 * gb / (gb.abs() + eps), rtol=1e-3, atol=1e-9)


def final_losses(ratio: float, steps: int = 10) -> list[float]:
    torch.manual_seed(0)
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    optimizer = build_optimizer(model, TrainingConfig(lr=2e-3, loraplus_lr_ratio=ratio))
    ids = token_ids(batch=4, seq=16)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_training_with_loraplus_lowers_the_loss_faster_than_plain_lora() -> None:
    plus, plain = final_losses(16), final_losses(1)
    assert plus[0] == plain[0]  # same start
    assert plus[-1] < 0.95 * plus[0]
    assert plus[-1] < plain[-1]  # B = 0 at init: a higher lr for B gets the update going sooner
