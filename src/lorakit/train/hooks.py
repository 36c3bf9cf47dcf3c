"""Points where a training variant joins the trainer's loop (variants/registry.py: TrainingHooks.hooks).

The trainer calls, for every hook in its list, in this order each optimizer step:
    loss = task_loss + sum(hook.extra_loss(model, step) for hooks that return one)
    loss.backward()                      (gradient accumulation: once per micro-batch)
    hook.on_backward_end(model, step)    gradients are ready, before clipping / optimizer.step
    optimizer.step(); scheduler.step(); optimizer.zero_grad()
    hook.on_step_end(model, step)        parameters hold their new values
and after each evaluation `hook.on_eval(step, metrics, last)` (last: no training step follows); a hook that
returns a reason (a string) stops the run there: it ends as an early-stopped run does, its adapter saved (a sweep's
pruner, lorakit/sweep/trial.py).
`step` counts optimizer steps from 0. `state_dict()` / `load_state_dict()` go into training checkpoints so
a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TrainHook:
    """Base class: every method is optional (a no-op here)."""

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        return None

    def on_backward_end(self, model: nn.Module, step: int) -> None:
        pass

    def on_step_end(self, model: nn.Module, step: int) -> None:
        pass

    def on_eval(self, step: int, metrics: dict[str, float], last: bool) -> str | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
