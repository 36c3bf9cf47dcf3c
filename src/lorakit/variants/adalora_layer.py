"""AdaLoRA's SVD-form adapter on nn.Linear / Conv1D: ΔW = P·Λ·Q · lora_alpha / ranknum (PEFT's layout and names).

    lora_A  Q  (r, in)   right singular vectors
    lora_E  Λ  (r, 1)    singular values; a pruned triplet has Λ_i = 0
    lora_B  P  (out, r)  left singular vectors
    ranknum    the initial rank init_r, fixed (so pruning does not rescale the kept triplets)

The tensors are ParameterDicts, so model keys read `<path>.lora_A.<name>` and file keys `...<path>.lora_A` (PEFT's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import AdapterError
from lorakit.layers.base import AdapterSpec, LoraLayer, adapter_compute_input

RANKNUM_EPS = 1e-5  # PEFT divides by ranknum + 1e-5; kept so outputs agree to the last bit that matters


def adalora_scaling(lora_alpha: float, ranknum: int) -> float:
    """AdaLoRA's scale, lora_alpha / (ranknum + 1e-5) with ranknum = init_r whatever rank a layer keeps (PEFT's;
    lora_alpha 0 means ranknum)."""
    alpha = lora_alpha if lora_alpha > 0 else float(ranknum)
    return alpha / (ranknum + RANKNUM_EPS)


class AdaLoraLinear(LoraLayer):
    """y = base(x) + scaling * (dropout(x) @ (Q ⊙ Λ)ᵀ) @ Pᵀ, scaling = lora_alpha / (ranknum + 1e-5)"""

    adapter_containers = ("lora_A", "lora_B", "lora_E", "lora_dropout", "lora_variant")

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_E = nn.ParameterDict()
        self.ranknum: dict[str, int] = {}
        self.fan_in_fan_out = fan_in_fan_out
        rows, cols = self.base_weight.shape
        self.in_features, self.out_features = (rows, cols) if fan_in_fan_out else (cols, rows)

    # plain LoRA adapters cannot share this layer: only AdaLoraConfig.inject_layer adds adapters (via add_svd_adapter)
    def add_adapter(self, name: str, spec: AdapterSpec) -> None:
        raise AdapterError(
            f"this layer holds AdaLoRA adapters ({self.adapter_names}); a plain LoRA adapter cannot share it. "
            "Use an AdaLoraConfig, or put the LoRA adapter on another model copy"
        )

    def add_svd_adapter(self, name: str, spec: AdapterSpec, ranknum: int) -> None:
        super().add_adapter(name, spec)
        self.ranknum[name] = ranknum
        self.scaling[name] = adalora_scaling(spec.lora_alpha, ranknum)

    def create_weights(self, name: str, spec: AdapterSpec, dtype: torch.dtype, device: torch.device) -> None:
        self.lora_A[name] = nn.Parameter(torch.empty(spec.r, self.in_features, dtype=dtype, device=device))
        self.lora_E[name] = nn.Parameter(torch.empty(spec.r, 1, dtype=dtype, device=device))
        self.lora_B[name] = nn.Parameter(torch.empty(self.out_features, spec.r, dtype=dtype, device=device))

    def reset_weights(self, name: str, init: bool | str) -> None:
        with torch.no_grad():
            # PEFT's AdaLoRA init: Λ = 0 (a no-op at start), P and Q ~ N(0, 0.02); False randomizes Λ too (tests)
            nn.init.normal_(self.lora_A[name], std=0.02)
            nn.init.normal_(self.lora_B[name], std=0.02)
            if init is False:
                nn.init.normal_(self.lora_E[name])
            else:
                nn.init.zeros_(self.lora_E[name])

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.ranknum.pop(name, None)

    def lora_weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q ⊙ Λ, P): the usual (A, B) pair, so delta = scaling * B @ A holds as for LoRA."""
        return self.lora_A[name] * self.lora_E[name], self.lora_B[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.lora_weights(name)
        delta = (b @ a) * self.scaling[name]  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def bias_delta(self, name: str) -> torch.Tensor | None:
        return None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return y
        for name in self._live:
            a, b = self.lora_weights(name)
            h = F.linear(self.lora_dropout[name](adapter_compute_input(x, a)), a)  # (..., r)
            y = y + (F.linear(h, b) * self.scaling[name]).to(y.dtype)
        return y

    def orthogonality(self, name: str) -> torch.Tensor:
        """||PᵀP − I||²_F + ||QQᵀ − I||²_F (the paper's regularizer for this layer)."""
        p, q = self.lora_B[name], self.lora_A[name]
        eye = torch.eye(q.shape[0], dtype=q.dtype, device=q.device)
        return (p.T @ p - eye).pow(2).sum() + (q @ q.T - eye).pow(2).sum()

    def apply_mask(self, name: str, keep: torch.Tensor) -> None:
        """Zero the singular values of the pruned triplets (P and Q stay: a later allocation may revive them)."""
        with torch.no_grad():
            self.lora_E[name].masked_fill_(~keep.view(-1, 1).to(self.lora_E[name].device), 0.0)
