"""The benchmark models: random-weight Llama configs built locally, the same adapter in lorakit and in PEFT,
and the FLOP counts that give each row its physical bound."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

import lorakit


@dataclass(frozen=True)
class LlamaSpec:
    """A Llama-architecture config; all linear layers of its blocks get adapters."""

    name: str
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads


SMALL = LlamaSpec("llama h512 x8", hidden=512, ffn=1376, layers=8, heads=8, kv_heads=8, vocab=8192)
WIDE = LlamaSpec("llama h2048 x2", hidden=2048, ffn=5504, layers=2, heads=16, kv_heads=16, vocab=8192)
TINY = LlamaSpec("llama h64 x2 (quick)", hidden=64, ffn=160, layers=2, heads=4, kv_heads=4, vocab=256)

INFER_BATCH, INFER_SEQ = 8, 128  # inference: 8 x 128 tokens
TRAIN_BATCH, TRAIN_SEQ = 4, 256  # training: 4 x 256 tokens
QUICK_BATCH, QUICK_SEQ = 2, 16


def build(spec: LlamaSpec, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=spec.hidden, intermediate_size=spec.ffn, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, vocab_size=spec.vocab,
        max_position_embeddings=512, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).eval()


def token_ids(spec: LlamaSpec, batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, spec.vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# -- the same adapter in both libraries --------------------------------------------------------------------
def lora_settings(r: int = 16, alpha: int = 32, dropout: float = 0.0, use_dora: bool = False) -> dict:
    # random B (init_lora_weights=False): a fresh zero adapter would make every output check pass trivially
    return dict(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", use_dora=use_dora,
                init_lora_weights=False)


def with_lorakit(base: nn.Module, seed: int = 0, autocast_adapter_dtype: bool = True, **settings) -> nn.Module:
    """A deep copy of `base` with a lorakit adapter named 'default' (random A and B). `autocast_adapter_dtype`:
    False keeps the adapter in a 16-bit base's dtype (both libraries' option of that name)."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    lorakit.add_adapter(model, lorakit.LoraConfig(**lora_settings(**settings)),
                        autocast_adapter_dtype=autocast_adapter_dtype)
    return model


def with_peft(base: nn.Module, twin: nn.Module, autocast_adapter_dtype: bool = True, **settings) -> nn.Module:
    """A deep copy of `base` with a PEFT adapter holding exactly the weights of lorakit's `twin`."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    model = get_peft_model(copy.deepcopy(base), LoraConfig(**lora_settings(**settings)),
                           autocast_adapter_dtype=autocast_adapter_dtype)
    # lorakit's file keys are PEFT's: the round trip through them is the interop path users take
    result = set_peft_model_state_dict(model, lorakit.adapter_state_dict(twin), adapter_name="default")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"adapter copy to PEFT incomplete: missing {missing[:3]}, unexpected "
                           f"{result.unexpected_keys[:3]}")
    return model.train(base.training)


def full_finetune(base: nn.Module) -> nn.Module:
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# -- FLOPs (multiply-adds per token) -----------------------------------------------------------------------
def linear_shapes(spec: LlamaSpec) -> list[tuple[str, int, int]]:
    """(name, in, out) of the adapted linears in one block."""
    h, f, kv = spec.hidden, spec.ffn, spec.kv_dim
    return [("q_proj", h, h), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", h, h),
            ("gate_proj", h, f), ("up_proj", h, f), ("down_proj", f, h)]


def block_macs(spec: LlamaSpec) -> int:
    return sum(i * o for _, i, o in linear_shapes(spec))


def lora_macs(spec: LlamaSpec, r: int) -> int:
    """Per token, per block: A (r x in) and B (out x r) for every adapted linear."""
    return sum(r * (i + o) for _, i, o in linear_shapes(spec))


def attention_macs(spec: LlamaSpec, seq: int) -> int:
    """Per token, per block: scores (q . k over seq) and the weighted sum of v (full, unmasked count)."""
    return 2 * seq * spec.hidden


def head_macs(spec: LlamaSpec) -> int:
    return spec.hidden * spec.vocab


def forward_bound(spec: LlamaSpec, r: int, seq: int) -> float:
    """Extra FLOPs of an unmerged LoRA forward over the base forward (0.041 = +4.1%)."""
    base = spec.layers * (block_macs(spec) + attention_macs(spec, seq)) + head_macs(spec)
    return spec.layers * lora_macs(spec, r) / base


def lora_step_over_floor(spec: LlamaSpec, r: int, seq: int) -> float:
    """FLOPs of a LoRA step computed as the plain formula (three low-rank products per adapted layer: forward,
    input grad, weight grads) over those of the floor (the same step with no adapter work)."""
    blocks, attn = spec.layers * block_macs(spec), spec.layers * attention_macs(spec, seq)
    first_inputs = sum(i * o for n, i, o in linear_shapes(spec) if n not in ("o_proj", "down_proj"))
    floor = 2 * (blocks + head_macs(spec)) - first_inputs + 3 * attn
    return 1 + 3 * spec.layers * lora_macs(spec, r) / floor


def train_speedup_bound(spec: LlamaSpec, r: int, seq: int) -> float:
    """FLOPs of a full fine-tuning step over those of a LoRA step (forward + backward).

    Full FT: every weight matmul runs 3 times (forward, input grad, weight grad); attention 3 times.
    LoRA: the frozen weights skip their weight grad; the first block's inputs need no grad (the embedding
    is frozen), so its q/k/v/gate/up skip the input grad too; the adapters' small matmuls run 3 times."""
    blocks, attn = spec.layers * block_macs(spec), spec.layers * attention_macs(spec, seq)
    full = 3 * (blocks + head_macs(spec)) + 3 * attn
    first_inputs = sum(i * o for n, i, o in linear_shapes(spec) if n not in ("o_proj", "down_proj"))
    lora = 2 * (blocks + head_macs(spec)) - first_inputs + 3 * attn + 3 * spec.layers * lora_macs(spec, r)
    return full / lora
