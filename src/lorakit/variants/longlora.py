"""LongLoRA (Chen et al., 2024): shifted sparse attention (S²-Attn) while training, full attention at inference.

S²-Attn splits the sequence into groups of G tokens and attends causally inside each group only. Half of the
heads use groups shifted by G/2 (tokens [0, G/2), [G/2, 3G/2), ...), so information flows between neighbouring
groups. Cost: O(N·G) instead of O(N²). The paper's code rolls the shifted heads' sequence by G/2, which puts the
first G/2 tokens after the last ones inside one group and lets them see the end of the sequence; lorakit pads
instead, so every token sees only earlier tokens of its own group (no look-ahead). A sequence that fits in one
group (N <= G) gets plain causal attention.

With LoRA, LongLoRA also trains the embeddings and the normalization layers (`longlora_modules_to_save`), which
the paper found necessary for long contexts. Extending the context itself is the base model's RoPE setting
(e.g. rope_scaling={"rope_type": "linear", "factor": 4}); S²-Attn makes training at that length affordable.

Llama-family models of transformers (any model whose attention goes through transformers' AttentionInterface)
are patched through that interface: `enable_s2_attn(model)` switches the model to the "lorakit_s2_attn"
implementation, which runs S²-Attn in modules that are training and SDPA otherwise; `disable_s2_attn` restores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters import add_adapter
from lorakit.config import LoraConfig, settings_from_dict
from lorakit.errors import ConfigError, TargetError

IMPLEMENTATION = "lorakit_s2_attn"
SETTINGS_ATTR = "lorakit_s2_attn"  # per attention module: the LongLoraConfig in force
PREVIOUS_ATTR = "_lorakit_s2_previous"  # on the model: the attention implementation before enable_s2_attn


@dataclass
class LongLoraConfig:
    """Settings of LongLoRA training (the `longlora` section of a training config)."""

    group_size_ratio: float = 0.25  # G = ratio * sequence length (the paper's 1/4)
    group_size: int | None = None  # a fixed G in tokens instead of the ratio
    trainable_embeddings: bool = True  # train the input embeddings (as modules_to_save)
    trainable_norms: bool = True  # train every normalization layer (as modules_to_save)

    def __post_init__(self) -> None:
        if not 0 < self.group_size_ratio <= 1:
            raise ConfigError(f"group_size_ratio={self.group_size_ratio!r}: expected a value in (0, 1], e.g. 0.25")
        if self.group_size is not None and (self.group_size < 2 or self.group_size % 2):
            raise ConfigError(f"group_size={self.group_size!r}: expected an even number of tokens >= 2")

    @classmethod
    def from_dict(cls, values: dict) -> LongLoraConfig:
        return settings_from_dict(cls, values, "longlora")

    def group_for(self, seq_len: int) -> int:
        size = self.group_size or int(seq_len * self.group_size_ratio)
        return max(2, size - size % 2)  # even, so half a group is whole tokens


# -- S²-Attn on tensors ------------------------------------------------------------------------------------------
def _layouts(seq_len: int, group: int, device: torch.device) -> list[tuple[torch.Tensor, int]]:
    """For plain and shifted heads: (token index at each slot of the grouped layout, number of groups). Slot value
    seq_len is a zero pad row. Each group holds its real tokens first and pads after, so causality hides pads."""
    shift = group // 2
    plain_groups, shifted_groups = -(-seq_len // group), -(-(seq_len + shift) // group)
    plain = torch.full((plain_groups * group,), seq_len, dtype=torch.long)
    plain[:seq_len] = torch.arange(seq_len)
    shifted = torch.full((shifted_groups * group,), seq_len, dtype=torch.long)
    shifted[:shift] = torch.arange(shift)  # group 0: tokens [0, G/2), then G/2 pads
    shifted[group:group + seq_len - shift] = torch.arange(shift, seq_len)  # groups [G/2 + kG, G/2 + (k+1)G)
    return [(plain.to(device), plain_groups), (shifted.to(device), shifted_groups)]


def s2_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, group_size: int,
                 scale: float | None = None, dropout_p: float = 0.0,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal S²-Attn. query (B, H, N, D); key, value (B, Hkv, N, D) with H % Hkv == 0; returns (B, H, N, D).

    Heads [0, H/2) attend within groups [kG, (k+1)G), heads [H/2, H) within the groups shifted by G/2.
    `attention_mask`: optional (B, 1, N, N) boolean (True = may attend), e.g. for padded batches."""
    batch, heads, seq_len, dim = query.shape
    if key.shape[1] != heads:  # grouped-query attention: kv head j serves query heads [j*g, (j+1)*g)
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    if seq_len <= group_size:
        mask = None if attention_mask is None else _as_bool(attention_mask) & _causal(seq_len, query.device)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=mask is None, scale=scale)
    half = heads // 2
    outputs = []
    for (layout, groups), heads_slice in zip(_layouts(seq_len, group_size, query.device),
                                             (slice(0, half), slice(half, heads)), strict=True):
        q, k, v = (_to_groups(t[:, heads_slice], layout, groups, group_size) for t in (query, key, value))
        mask = None if attention_mask is None else _group_mask(attention_mask, layout, groups, group_size)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None,
                                             scale=scale)  # (B, h, groups, G, D)
        real = layout < seq_len
        position = torch.empty(seq_len, dtype=torch.long, device=query.device)
        position[layout[real]] = torch.nonzero(real).view(-1)  # where each token sits in the layout
        outputs.append(out.reshape(batch, -1, groups * group_size, dim).index_select(2, position))
    return torch.cat(outputs, dim=1)


def _to_groups(x: torch.Tensor, layout: torch.Tensor, groups: int, group: int) -> torch.Tensor:
    padded = torch.cat([x, x.new_zeros(*x.shape[:-2], 1, x.shape[-1])], dim=-2)  # row N is the pad
    return padded.index_select(-2, layout).view(*x.shape[:-2], groups, group, x.shape[-1])


def _causal(size: int, device: torch.device) -> torch.Tensor:
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    """Boolean "may attend" from a boolean mask or an additive float mask (0 allowed, very negative not)."""
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def _group_mask(mask: torch.Tensor, layout: torch.Tensor, groups: int, group: int) -> torch.Tensor:
    """(B, 1, groups, G, G) boolean mask: the user's mask gathered per group, made causal; every query may see
    itself, so a pad (or a fully padded query) gets a finite, discarded output instead of NaN."""
    padded = F.pad(_as_bool(mask), (0, 1, 0, 1), value=False)  # row / column N: the layout's pad
    idx = layout.view(groups, group)
    gathered = padded[:, :, idx[:, :, None], idx[:, None, :]]  # (B, 1, groups, G, G)
    return (gathered & _causal(group, mask.device)) | torch.eye(group, dtype=torch.bool, device=mask.device)


# -- the transformers attention function -------------------------------------------------------------------------
def s2_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                         **kwargs) -> tuple[torch.Tensor, None]:
    """transformers AttentionInterface signature; returns (B, N, H, D) like its other implementations."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    settings: LongLoraConfig | None = getattr(module, SETTINGS_ATTR, None)
    if settings is None or not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[..., : key.shape[-2]]
    group = settings.group_for(query.shape[-2])
    out = s2_attention(query, key, value, group, scale=scaling, dropout_p=dropout, attention_mask=attention_mask)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, s2_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)  # same masks as SDPA (None when causal)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "head_dim")
            and getattr(m, "is_causal", False)]


def enable_s2_attn(model: nn.Module, config: LongLoraConfig | None = None) -> None:
    """Use S²-Attn in every causal attention module while it is in training mode (full attention in eval)."""
    config = config or LongLoraConfig()
    modules = attention_modules(model)
    hf_config = getattr(model, "config", None)
    if not modules or hf_config is None or not hasattr(model, "set_attn_implementation"):
        raise TargetError(
            f"S²-Attn patches transformers' causal attention (Llama-family models); {type(model).__name__} has no "
            "attention module that goes through transformers' AttentionInterface"
        )
    _register()
    if PREVIOUS_ATTR not in model.__dict__:
        model.__dict__[PREVIOUS_ATTR] = hf_config._attn_implementation
    model.set_attn_implementation(IMPLEMENTATION)
    for module in modules:
        setattr(module, SETTINGS_ATTR, config)


def disable_s2_attn(model: nn.Module) -> None:
    """Back to the attention implementation the model had before enable_s2_attn."""
    previous = model.__dict__.pop(PREVIOUS_ATTR, None)
    if previous is None:
        return
    model.set_attn_implementation(previous)
    for module in attention_modules(model):
        if hasattr(module, SETTINGS_ATTR):
            delattr(module, SETTINGS_ATTR)


@contextmanager
def s2_attn(model: nn.Module, config: LongLoraConfig | None = None) -> Iterator[nn.Module]:
    """`with s2_attn(model): train...` — S²-Attn inside the block (in training mode), as before after it."""
    enable_s2_attn(model, config)
    try:
        yield model
    finally:
        disable_s2_attn(model)


# -- trainable embeddings and norms ------------------------------------------------------------------------------
def longlora_modules_to_save(model: nn.Module, config: LongLoraConfig | None = None) -> list[str]:
    """Leaf names of the input embedding and of the normalization layers, for LoraConfig.modules_to_save."""
    config = config or LongLoraConfig()
    names: set[str] = set()
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for path, module in model.named_modules():
        leaf = path.rsplit(".", 1)[-1]
        if config.trainable_embeddings and module is embeddings:
            names.add(leaf)
        if config.trainable_norms and "norm" in type(module).__name__.lower() and path:
            names.add(leaf)
    return sorted(names)


def prepare_longlora(model: nn.Module, lora_config: LoraConfig, config: LongLoraConfig | None = None,
                     adapter_name: str = "default") -> nn.Module:
    """Add the LoRA adapter with embeddings and norms trainable (modules_to_save), and turn S²-Attn on."""
    config = config or LongLoraConfig()
    extra = longlora_modules_to_save(model, config)
    saved = sorted(set(lora_config.modules_to_save or []) | set(extra))
    add_adapter(model, dataclasses.replace(lora_config, modules_to_save=saved or None), adapter_name)
    enable_s2_attn(model, config)
    return model
