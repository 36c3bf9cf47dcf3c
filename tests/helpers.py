"""Tiny random models for tests (never downloaded) and small shared helpers."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 128


def tiny_llama(seed: int = 0, **overrides):
    """A 2-layer LlamaForCausalLM with hidden size 32 (random weights, a few thousand parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def tiny_gpt2(seed: int = 0, **overrides):
    """A 2-layer GPT2LMHeadModel (attention and MLP are transformers' Conv1D, weight stored (in, out))."""
    from transformers import GPT2Config, GPT2LMHeadModel

    settings = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)
    settings.update(overrides)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**settings)).eval()


def tiny_bert_seq_cls(seed: int = 0, num_labels: int = 3, **overrides):
    """A 2-layer BertForSequenceClassification (its head is `classifier`)."""
    from transformers import BertConfig, BertForSequenceClassification

    settings = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
        max_position_embeddings=64, num_labels=num_labels,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**settings)).eval()


class TinyConvNet(nn.Module):
    """Conv2d (plain and grouped), Conv3d, Conv1d and a Linear head, all on the path to the output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3d = nn.Conv3d(2, 2, (1, 3, 3), padding=(0, 1, 1))
        self.conv1d = nn.Conv1d(8, 6, 3, stride=2)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 3, H, W)
        h = self.grouped(torch.relu(self.conv(x)))  # (batch, 8, H, W)
        b, _, height, width = h.shape
        h = self.conv3d(h.reshape(b, 2, 4, height, width)).reshape(b, 8, height, width)
        h = self.conv1d(h.flatten(2))  # (batch, 6, L)
        return self.head(h.mean(-1))  # (batch, 5)


def conv_input(batch: int = 2, size: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def token_ids(batch: int = 2, seq: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits
