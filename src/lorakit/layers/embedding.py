"""LoRA on nn.Embedding: the update is a low-rank table (num_embeddings, dim) = (B @ A)^T * scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ConfigError
from lorakit.layers.base import AdapterSpec, LoraLayer
from lorakit.layers.lowrank import scaled_product

# PEFT's names, so the state-dict keys match its files: lora_embedding_A is (r, num_embeddings),
# lora_embedding_B is (dim, r).


class LoraEmbedding(LoraLayer):
    """y = embed(ids) + scale * embed_with(A^T)(ids) @ B^T"""

    adapter_containers = ("lora_embedding_A", "lora_embedding_B", "lora_dropout", "lora_variant")

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.num_embeddings, self.embedding_dim = base_layer.weight.shape

    def create_weights(self, name: str, spec: AdapterSpec, dtype: torch.dtype, device: torch.device) -> None:
        if spec.lora_bias:
            raise ConfigError("lora_bias=True is not supported on Embedding layers (they have no bias)")
        self.lora_embedding_A[name] = nn.Parameter(torch.empty(spec.r, self.num_embeddings, dtype=dtype, device=device))
        self.lora_embedding_B[name] = nn.Parameter(torch.empty(self.embedding_dim, spec.r, dtype=dtype, device=device))

    def reset_weights(self, name: str, init: bool | str) -> None:
        a, b = self.lora_weights(name)
        with torch.no_grad():
            if init is False:
                nn.init.normal_(a)
                nn.init.normal_(b)
            elif init is True or init == "gaussian":
                # zero A, random B: the adapter starts as a no-op (PEFT's convention for embeddings)
                nn.init.zeros_(a)
                nn.init.normal_(b)
            else:
                raise ConfigError(f"init_lora_weights={init!r} is not supported on Embedding layers")

    def lora_weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_embedding_A[name], self.lora_embedding_B[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.lora_weights(name)
        return scaled_product(a, b, self.scaling[name]).T  # (num_embeddings, dim)

    def _lookup(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        return F.embedding(ids, table, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq,
                           base.sparse)

    def add_lora(self, y: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        a, b = self.lora_weights(name)
        h = self._lookup(x, a.T)  # (..., r): rows of A^T looked up like the embedding itself
        return y + (h @ b.T * self.scaling[name]).to(y.dtype)

