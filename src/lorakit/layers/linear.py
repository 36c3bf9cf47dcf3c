"""LoRA on nn.Linear and on transformers' Conv1D (GPT-2 style, weight stored (in, out): fan_in_fan_out)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ConfigError
from lorakit.kernels import enabled as kernels_enabled
from lorakit.kernels.linear import fast_forward
from lorakit.layers.base import AdapterSpec, LoraLayer, adapter_compute_input, remember_initial
from lorakit.layers.lowrank import scaled_product
from lorakit.variants.registry import for_init


class LoraLinear(LoraLayer):
    """y = base(x) + sum over live adapters a:  scale_a * B_a(A_a(dropout_a(x)))"""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.fan_in_fan_out = fan_in_fan_out
        rows, cols = self.base_weight.shape
        self.in_features, self.out_features = (rows, cols) if fan_in_fan_out else (cols, rows)

    def create_weights(self, name: str, spec: AdapterSpec, dtype: torch.dtype, device: torch.device) -> None:
        self.lora_A[name] = nn.Linear(self.in_features, spec.r, bias=False, dtype=dtype, device=device)
        self.lora_B[name] = nn.Linear(spec.r, self.out_features, bias=spec.lora_bias, dtype=dtype, device=device)

    def reset_weights(self, name: str, init: bool | str) -> None:
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        with torch.no_grad():
            decomposing = for_init(init)
            if init is False:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                nn.init.kaiming_uniform_(b, a=math.sqrt(5))
            elif init is True:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                nn.init.zeros_(b)
            elif init == "gaussian":
                nn.init.normal_(a, std=1 / self.r[name])
                nn.init.zeros_(b)
            elif decomposing is not None and decomposing.decompose is not None:
                self._init_from_base(name, init, decomposing.decompose)
            else:  # pragma: no cover - LoraConfig validates init
                raise ConfigError(f"init_lora_weights={init!r} is not supported on Linear layers")
            if self.lora_bias[name]:
                nn.init.zeros_(self.lora_B[name].bias)

    def _init_from_base(self, name: str, init: str, decompose: Callable[..., tuple]) -> None:
        """An init that starts from the base weight (a variant's `decompose`): adapter = its factors, base weight
        keeps the residual."""
        if not self.base_weight.dtype.is_floating_point:
            raise ConfigError(f"init_lora_weights={init!r} needs a floating-point base weight (quantized base?)")
        weight = self.base_weight.T if self.fan_in_fan_out else self.base_weight
        r, scaling = self.r[name], self.scaling[name]
        a, b, residual = decompose(weight, r, scaling, init)
        self.lora_A[name].weight.copy_(a)
        self.lora_B[name].weight.copy_(b)
        self.base_weight.copy_(residual.T if self.fan_in_fan_out else residual)
        remember_initial(self, name, self.lora_A[name].weight, self.lora_B[name].weight)  # for saving

    def lora_weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[name].weight, self.lora_B[name].weight

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.lora_weights(name)
        delta = scaled_product(a, b, self.scaling[name])  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self._live and kernels_enabled():  # the same formula with fewer passes (kernels/linear.py), or None
            fast = fast_forward(self, x, *args, **kwargs)
            if fast is not None:
                return fast
        return super().forward(x, *args, **kwargs)  # the reference: base(x) + each live adapter's add_lora

    def add_lora(self, y: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        """y + scale * B(A(dropout(x))), rounded once into y's dtype: the scale folded into one multiply-add."""
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        h = F.linear(self.lora_dropout[name](adapter_compute_input(x, lora_a.weight)), lora_a.weight)  # (..., r)
        scale = self.scaling[name]
        if y.dtype != lora_b.weight.dtype:  # 16-bit base: add in the adapter's fp32, round once (as PEFT does)
            return torch.add(y, lora_b(h), alpha=scale).to(y.dtype)
        y2 = y.reshape(-1, y.shape[-1])  # (tokens, out); a view for contiguous y
        out = torch.addmm(y2, h.reshape(-1, h.shape[-1]), lora_b.weight.T, alpha=scale)  # y + s * h @ B^T
        if lora_b.bias is not None:
            out = out.add(lora_b.bias, alpha=scale)
        return out.view(y.shape)
