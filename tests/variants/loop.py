"""A few AdamW steps with TrainHooks called in the trainer's order (see lorakit/train/hooks.py)."""

from __future__ import annotations

import torch
from torch import nn


def train_steps(model: nn.Module, ids: torch.Tensor, steps: int, hooks=(), lr: float = 1e-2) -> list[float]:
    """Causal-LM loss on `ids` for `steps` optimizer steps; returns the task loss of each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        total = loss
        for hook in hooks:
            extra = hook.extra_loss(model, step)
            if extra is not None:
                total = total + extra
        total.backward()
        for hook in hooks:
            hook.on_backward_end(model, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for hook in hooks:
            hook.on_step_end(model, step)
        losses.append(loss.item())
    return losses
