"""LoRA on nn.Conv1d / Conv2d / Conv3d: A is a conv like the base (in -> r), B a 1x1 conv (r -> out).

With groups > 1, B is grouped (PEFT's layout, so files agree); such an update mixes all input channels,
which a grouped base weight cannot hold, so it runs unmerged and merging it is refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lorakit.errors import ConfigError, MergeError
from lorakit.layers.base import AdapterSpec, LoraLayer, adapter_compute_input
from lorakit.layers.lowrank import scaled_product


class LoraConv(LoraLayer):
    """y = conv(x) + scale * B(A(dropout(x)))"""

    def __init__(self, base_layer: nn.modules.conv._ConvNd) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.in_features = base_layer.in_channels
        self.out_features = base_layer.out_channels

    def create_weights(self, name: str, spec: AdapterSpec, dtype: torch.dtype, device: torch.device) -> None:
        base = self.base_layer
        if spec.r % base.groups:
            raise ConfigError(
                f"{type(base).__name__} with groups={base.groups} needs a rank divisible by the groups, got r={spec.r}"
            )
        conv_type = type(base)
        ones = (1,) * (base.weight.dim() - 2)
        self.lora_A[name] = conv_type(
            base.in_channels, spec.r, base.kernel_size, base.stride, base.padding, base.dilation,
            bias=False, padding_mode=base.padding_mode, dtype=dtype, device=device,
        )
        self.lora_B[name] = conv_type(
            spec.r, base.out_channels, ones, ones, groups=base.groups, bias=spec.lora_bias, dtype=dtype, device=device
        )

    def reset_weights(self, name: str, init: bool | str) -> None:
        a, b = self.lora_weights(name)
        with torch.no_grad():
            if init is False:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                nn.init.kaiming_uniform_(b, a=math.sqrt(5))
            elif init is True:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                nn.init.zeros_(b)
            elif init == "gaussian":
                nn.init.normal_(a, std=1 / self.r[name])
                nn.init.zeros_(b)
            else:
                raise ConfigError(f"init_lora_weights={init!r} is not supported on convolution layers")
            if self.lora_bias[name]:
                nn.init.zeros_(self.lora_B[name].bias)

    def lora_weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[name].weight, self.lora_B[name].weight

    def delta_weight(self, name: str) -> torch.Tensor:
        self._check_mergeable(name)
        a, b = self.lora_weights(name)  # a: (r, in, *k), b: (out, r, 1...)
        b2 = b.reshape(b.shape[0], b.shape[1])  # (out, r)
        delta = scaled_product(a.reshape(a.shape[0], -1), b2, self.scaling[name])  # (out, in * k...)
        return delta.reshape(b.shape[0], *a.shape[1:])  # (out, in, *k)

    def _check_mergeable(self, name: str) -> None:
        if self.base_layer.groups > 1:
            raise MergeError(
                f"adapter {name!r} sits on a grouped convolution (groups={self.base_layer.groups}); its update "
                "mixes all input channels, which the grouped base weight cannot hold: keep it unmerged"
            )

    def add_lora(self, y: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        update = lora_b(lora_a(self.lora_dropout[name](adapter_compute_input(x, lora_a.weight))))
        return y.add(update.to(y.dtype), alpha=self.scaling[name])
