"""Fast paths of the LoRA layers, behind one switch.

Each layer's plain formula (lorakit/layers) is the reference: y = base(x) + sum over live adapters of
s · B(A(dropout(x))). The kernels here compute the same thing with fewer passes over memory:
    linear.py         LoraLinear: fused multiply-adds into the base output, per-call merged weights W + s·B·A
    lora_autograd.py  LoraLinear in training: one autograd node over a frozen nn.Linear
    sparse_dropout.py dropout computed from the dropped entries only
Each is tested against the reference formula (tests/kernels), with the switch on and off.

The switch: on by default; LORAKIT_KERNELS=0 in the environment turns it off at import, `set_enabled(False)`
at run time, and `with lorakit.kernels.use(False): ...` for a block. Off, every layer runs its reference formula.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

OFF_VALUES = ("0", "false", "no", "off")

_enabled = os.environ.get("LORAKIT_KERNELS", "1").strip().lower() not in OFF_VALUES


def enabled() -> bool:
    """Whether layers may take a fast path (the reference formula runs when it is off)."""
    return _enabled


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = bool(on)


@contextmanager
def use(on: bool) -> Iterator[None]:
    """Switch the kernels on or off for a block; the previous setting comes back after it."""
    before = _enabled
    set_enabled(on)
    try:
        yield
    finally:
        set_enabled(before)
