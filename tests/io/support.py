"""Shared helpers of the adapter-file tests: forward passes, PEFT models, and exact model snapshots."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lorakit.adapters import ACTIVE_ATTR, REGISTRY_ATTR, active_adapters, list_adapters


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of a transformers model, or the plain output of a torch module."""
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def perturb_trainable(model: nn.Module, seed: int = 5, scale: float = 0.1) -> None:
    """Move every trainable tensor (biases, heads, magnitudes, lora_B biases) off its initial value, so a file
    that leaves any of them out cannot reproduce the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * scale)


def peft_model(base: nn.Module, adapter_name: str = "default", **config: Any):
    """A PEFT model on a copy of `base` (init_lora_weights=False unless given), trainable tensors perturbed."""
    from peft import LoraConfig, get_peft_model

    config.setdefault("init_lora_weights", False)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(**config), adapter_name=adapter_name)
    perturb_trainable(model)
    return model


@dataclass
class Snapshot:
    modules: list[tuple[str, str, int]]  # (path, class name, id) of every module
    tensors: dict[str, torch.Tensor]
    requires_grad: dict[str, bool]
    adapters: list[str]
    active: list[str]
    attrs: set[str]
    output: torch.Tensor


def snapshot(model: nn.Module, x: torch.Tensor) -> Snapshot:
    return Snapshot(
        modules=[(p, type(m).__name__, id(m)) for p, m in model.named_modules()],
        tensors={k: v.detach().clone() for k, v in model.state_dict().items()},
        requires_grad={k: p.requires_grad for k, p in model.named_parameters()},
        adapters=list_adapters(model),
        active=active_adapters(model),
        attrs={a for a in (REGISTRY_ATTR, ACTIVE_ATTR) if a in model.__dict__},
        output=forward(model, x),
    )


def assert_unchanged(before: Snapshot, model: nn.Module, x: torch.Tensor) -> None:
    """The model is exactly as in `before`: same module objects, tensors, flags, adapters and output."""
    after = snapshot(model, x)
    assert after.modules == before.modules
    assert after.tensors.keys() == before.tensors.keys()
    for key, value in before.tensors.items():
        torch.testing.assert_close(after.tensors[key], value, rtol=0, atol=0, msg=key)
    assert after.requires_grad == before.requires_grad
    assert (after.adapters, after.active, after.attrs) == (before.adapters, before.active, before.attrs)
    torch.testing.assert_close(after.output, before.output, rtol=0, atol=0)
