"""LoRA+ (Hayou et al., 2024): lora_B learns `training.loraplus_lr_ratio` times faster than lora_A.

A training-only variant: no adapter config, no file form, nothing at inference. Its registry entry
(variants/builtin.py) gives the optimizer's parameter groups the B side's learning rate (train/optim.py asks the
registry: `TrainingHooks.param_group`). Ratio 1 (the default) is plain LoRA.
"""

from __future__ import annotations

from typing import Any

B_MARKERS = (".lora_B.", ".lora_embedding_B.")  # the "B" side of an adapter, in a dotted parameter name


def loraplus_group(dotted_name: str, training: Any) -> tuple[str, float] | None:
    """("lora_B", ratio · lr) for a B-side parameter (`dotted_name` starts with "."), else None."""
    if any(marker in dotted_name for marker in B_MARKERS):
        return "lora_B", training.lr * training.loraplus_lr_ratio
    return None
