"""The LM head run only on the positions that carry a loss.

A causal LM's head (hidden -> vocabulary) is the widest matmul of a small model's step (SmolLM2-135M: 28M of its
135M weights), and its logits the largest tensor (tokens x 49k, in fp32). In chat and instruction data most
positions are prompt, with no target, so their logits are computed and thrown away. Here the model's own forward
runs with a forward pre-hook on its output embeddings that keeps only the rows with a target: the head sees
(n, hidden) instead of (batch, seq, hidden), and what the forward does after the head (softcapping, a logit
scale) runs on those n rows. The loss and its gradient are the same; the head's work and the logits shrink to n rows.

Which models: those whose forward takes `logits_to_keep` (transformers' causal LMs), which apply the head to
`hidden_states[:, kept, :]` and return what it gives. The first call on a model checks the shape it got back; a
forward that returns anything else (or fails on the 2-D input) gets the full logits from then on.
tests/train/test_head.py checks the loss and the LoRA gradients against the full logits.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_CHECKED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()  # model -> the head path works


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / FSDP wrap the model in .module


def target_logits(model: nn.Module, inputs: dict[str, Any], keep: torch.Tensor) -> torch.Tensor | None:
    """model(**inputs).logits at the positions where `keep` (shaped like input_ids) is True, as (n, vocab); None when
    the model cannot do it this way (the caller then takes the full logits)."""
    inner = _inner(model)
    if _CHECKED.get(inner) is False or not bool(keep.any()):
        return None
    head = _output_head(inner)
    if head is None:
        _CHECKED[inner] = False
        return None
    count = int(keep.sum())
    handle = head.register_forward_pre_hook(_keep_rows(keep), with_kwargs=True)
    try:
        logits = model(**inputs).logits
    except (RuntimeError, ValueError, IndexError):  # a forward that reshapes the head's output
        if inner in _CHECKED:
            raise  # it worked before: a real error
        _CHECKED[inner] = False
        return None
    finally:
        handle.remove()
    if logits.dim() != 2 or logits.shape[0] != count:
        _CHECKED[inner] = False
        return None
    _CHECKED[inner] = True
    return logits


def _output_head(model: nn.Module) -> nn.Module | None:
    forward = getattr(type(model), "forward", None)
    get = getattr(model, "get_output_embeddings", None)
    if forward is None or not callable(get):
        return None
    try:
        takes_keep = "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return None
    head = get() if takes_keep else None
    return head if isinstance(head, nn.Module) else None


def _keep_rows(keep: torch.Tensor) -> Callable:
    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0]  # (batch, seq, hidden)
        if hidden.shape[:2] != keep.shape:
            raise ValueError(f"the head got {tuple(hidden.shape)}, not {tuple(keep.shape)} + (hidden,)")
        return (hidden[keep], *args[1:]), kwargs  # (n, hidden)

    return pre_hook
