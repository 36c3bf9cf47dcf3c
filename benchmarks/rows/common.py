"""What several rows share: the model sizes per mode, a training step, and the lorakit == PEFT checks."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from benchmarks import models
from benchmarks.harness import Settings


def infer_setup(settings: Settings) -> tuple[models.LlamaSpec, int, int]:
    if settings.quick:
        return models.TINY, models.QUICK_BATCH, models.QUICK_SEQ
    return models.SMALL, models.INFER_BATCH, models.INFER_SEQ


def train_setup(settings: Settings) -> tuple[models.LlamaSpec, int, int]:
    if settings.quick:
        return models.TINY, models.QUICK_BATCH, models.QUICK_SEQ
    return models.SMALL, models.TRAIN_BATCH, models.TRAIN_SEQ


def describe(spec: models.LlamaSpec, dtype: torch.dtype, batch: int, seq: int) -> str:
    return f"{spec.name}, {str(dtype).removeprefix('torch.')}, {batch}x{seq}"


def train_step(model: nn.Module, ids: torch.Tensor, lr: float = 1e-3, loss: str = "model") -> Callable[[], float]:
    """One optimizer step (AdamW over the trainable parameters) on the mean causal-LM loss; returns the loss.

    loss="model": the model's own loss (`model(labels=...)`, what the Hugging Face Trainer runs over PEFT);
    loss="lorakit": the loss `lorakit train` runs (lorakit.train.tasks, lorakit.train.loss). Same value."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr) if params else None  # the floor trains nothing
    compute = {"model": lambda: model(input_ids=ids, labels=ids).loss, "lorakit": _lorakit_loss(model, ids)}[loss]

    def step() -> float:
        loss = compute()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def own_loss(contender: str) -> str:
    """The loss a contender's users run: lorakit's ("lk..." / "lorakit...") runs `lorakit train`'s, others the
    model's own (what the Hugging Face Trainer runs over PEFT)."""
    return "lorakit" if contender.startswith(("lk", "lorakit")) else "model"


def _lorakit_loss(model: nn.Module, ids: torch.Tensor) -> Callable[[], torch.Tensor]:
    from lorakit.train.tasks import TASKS

    task = TASKS["causal-lm"]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    units = ids.shape[0] * (ids.shape[1] - 1)  # every next-token target counts
    return lambda: task.loss_sum(model, batch) / units


def frozen_floor(base: nn.Module) -> nn.Module:
    """The base with nothing trainable, its backward running as a LoRA model's must (no adapter work at all):
    gradients start at the outputs of the first block's q/k/v/gate/up. No LoRA step can be faster."""
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(False)
    first = model.model.layers[0]
    for layer in (first.self_attn.q_proj, first.self_attn.k_proj, first.self_attn.v_proj, first.mlp.gate_proj,
                  first.mlp.up_proj):
        layer.register_forward_hook(lambda module, inputs, out: out.requires_grad_())
    return model


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_same_logits(a: nn.Module, b: nn.Module, ids: torch.Tensor, what: str) -> None:
    ya, yb = logits(a, ids), logits(b, ids)
    # bf16 outputs: the two libraries add the fp32 adapter output in different orders before one bf16 rounding
    tol = {"atol": 2e-2, "rtol": 2e-2} if ya.dtype == torch.bfloat16 else {}
    try:
        torch.testing.assert_close(ya, yb, **tol)
    except AssertionError as exc:
        raise AssertionError(f"{what}: outputs differ (a speedup that changes them does not count)\n{exc}") from None


def mean_error(model: nn.Module, ids: torch.Tensor, outputs: torch.Tensor | None = None) -> float:
    """Mean |logit error| of a 16-bit model against the exact outputs of its own weights (computed in fp32).
    `outputs`: the model's logits on `ids`, when the caller has them already."""
    outputs = logits(model, ids) if outputs is None else outputs
    return (outputs.float() - logits(copy.deepcopy(model).float(), ids)).abs().mean().item()


def assert_as_accurate(lk: nn.Module, pf: nn.Module, ids: torch.Tensor, what: str) -> tuple[float, float]:
    """16-bit models whose two libraries round differently: lorakit's mean |logit error| (mean_error) is no
    larger than PEFT's (+2% for noise), and the two agree within bf16 tolerance on 99% of logits.
    Returns the two errors."""
    ya, yb = logits(lk, ids).float(), logits(pf, ids).float()
    err_a, err_b = mean_error(lk, ids, ya), mean_error(pf, ids, yb)
    far = ((ya - yb).abs() > 2e-2 + 2e-2 * yb.abs()).float().mean().item()
    if err_a > 1.02 * err_b or far > 0.01:
        raise AssertionError(f"{what}: lorakit's outputs are less accurate than PEFT's (mean |error| {err_a:.5f} vs "
                             f"{err_b:.5f}) or disagree on {100 * far:.2f}% of logits (a speedup that changes "
                             "them does not count)")
    return err_a, err_b


def assert_same_losses(make_a: Callable[[], nn.Module], make_b: Callable[[], nn.Module], ids: torch.Tensor,
                       steps: int, what: str, loss_a: str = "lorakit", loss_b: str = "model") -> list[float]:
    """Fresh copies of both models, `steps` optimizer steps each on the same batch: the same loss curve.
    `loss_a`, `loss_b`: how each computes its loss (train_step); by default a is lorakit's, b PEFT's."""
    losses_a = _losses(make_a(), ids, steps, loss_a)
    losses_b = _losses(make_b(), ids, steps, loss_b)
    torch.testing.assert_close(torch.tensor(losses_a), torch.tensor(losses_b),
                               msg=lambda m: f"{what}: loss curves differ\n{m}")
    return losses_a


def _losses(model: nn.Module, ids: torch.Tensor, steps: int, loss: str) -> list[float]:
    step = train_step(model, ids, loss=loss)
    return [step() for _ in range(steps)]
