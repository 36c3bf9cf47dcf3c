"""Delta-LoRA (Zi et al., 2023): the frozen W also moves, by the step-to-step change of the low-rank update.

After every optimizer step t >= start_step, for each adapted layer:

    W  <-  W + λ · (s·B_{t+1}·A_{t+1} − s·B_t·A_t)          (λ = update_ratio, s = the adapter's scaling)

W gets no gradient and no optimizer state: the update costs one (out, 2r) @ (2r, in) product per layer and step,
written in place. Summed over steps it telescopes, W_T = W_0 + λ·s·(B_T·A_T − B_K·A_K) (K = start_step), which
is how a resumed run rebuilds W from the adapter and the hook's small saved state. The paper removes dropout
from the LoRA branch (with dropout the update no longer follows the gradient of W·x); keep lora_dropout = 0.
The trained model is W_T + s·B_T·A_T: export it with lorakit.merge_and_unload (the adapter file alone does not
hold the change of W).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lorakit.config import settings_from_dict
from lorakit.errors import ConfigError, TargetError
from lorakit.inject import lora_layers
from lorakit.layers.base import LoraLayer
from lorakit.train.hooks import TrainHook
from lorakit.variants.dora import as_matrices


@dataclass
class DeltaLoraConfig:
    """The `delta_lora` section of a training config."""

    update_ratio: float = 2.0  # λ: how far W follows the change of s·B·A (the paper's default, 2)
    start_step: int = 500  # K: W stays frozen for the first K optimizer steps (the paper's warm-up, 500)
    adapter_name: str = "default"

    def __post_init__(self) -> None:
        if not isinstance(self.update_ratio, (int, float)) or self.update_ratio < 0:
            raise ConfigError(f"update_ratio={self.update_ratio!r}: expected a number >= 0 (the paper uses 2)")
        if not isinstance(self.start_step, int) or self.start_step < 0:
            raise ConfigError(f"start_step={self.start_step!r}: expected an integer >= 0 (the paper uses 500)")

    @classmethod
    def from_dict(cls, values: dict) -> DeltaLoraConfig:
        return settings_from_dict(cls, values, "delta_lora")


def _low_rank(layer: LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    _, a, b = as_matrices(layer, name)
    return a.detach().clone(), b.detach().clone()


class DeltaLoraHook(TrainHook):
    """Snapshots (A, B) before each optimizer step and moves W by the change after it."""

    def __init__(self, model: nn.Module, config: DeltaLoraConfig | None = None) -> None:
        self.config = config or DeltaLoraConfig()
        name = self.config.adapter_name
        self.layers = {p: layer for p, layer in lora_layers(model) if name in layer.r}
        if not self.layers:
            raise TargetError(f"Delta-LoRA: the model has no layer with adapter {name!r}")
        for path, layer in self.layers.items():
            if name in layer.lora_variant:
                raise ConfigError(f"Delta-LoRA does not combine with a LoRA variant (layer {path} uses "
                                  f"{type(layer.lora_variant[name]).__name__}); use plain LoRA")
            as_matrices(layer, name)  # raises for layer types without an (out, in) weight
            if not layer.base_weight.dtype.is_floating_point:
                raise ConfigError(f"Delta-LoRA updates W in place; layer {path} has a {layer.base_weight.dtype} "
                                  "(quantized) weight")
            if layer.lora_dropout[name].__class__ is not nn.Identity:
                warnings.warn("Delta-LoRA: lora_dropout > 0; the paper removes dropout from the LoRA branch",
                              stacklevel=2)
                break
        self._before: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.anchor: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # (A_K, B_K): where the updates began

    def on_backward_end(self, model: nn.Module, step: int) -> None:
        if step < self.config.start_step:
            return
        name = self.config.adapter_name
        self._before = {p: _low_rank(layer, name) for p, layer in self.layers.items()}
        if not self.anchor:
            self.anchor = {p: (a.cpu(), b.cpu()) for p, (a, b) in self._before.items()}

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if not self._before:
            return
        for path, layer in self.layers.items():
            a_old, b_old = self._before[path]
            self.move_weight(layer, a_old, b_old)
        self._before = {}

    def move_weight(self, layer: LoraLayer, a_old: torch.Tensor, b_old: torch.Tensor, sign: float = 1.0) -> None:
        """W += sign · λ · s · (B·A − B_old·A_old), as one (out, 2r) @ (2r, in) product written into W."""
        name = self.config.adapter_name
        w, a, b = as_matrices(layer, name)
        coef = sign * self.config.update_ratio * layer.scaling[name]
        with torch.no_grad():
            a_cat = torch.cat([a, a_old.to(a.device)])  # (2r, in)
            b_cat = torch.cat([b, -b_old.to(b.device)], dim=1)  # (out, 2r)
            if w.dtype == b_cat.dtype:
                w.addmm_(b_cat, a_cat, alpha=coef)
            else:  # 16-bit W: form the product in the adapter's fp32, round once
                w.add_((b_cat @ a_cat).mul_(coef).to(w.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": {p: (a.clone(), b.clone()) for p, (a, b) in self.anchor.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume on a fresh base model, AFTER the adapter's weights (A_t, B_t) are back in the model: rebuilds
        W_t = W_0 + λ·s·(B_t·A_t − B_K·A_K) in place (exact up to float rounding of the per-step sums)."""
        self.anchor = {p: (a.clone(), b.clone()) for p, (a, b) in state["anchor"].items()}
        for path, (a_k, b_k) in self.anchor.items():
            self.move_weight(self.layers[path], a_k, b_k)
