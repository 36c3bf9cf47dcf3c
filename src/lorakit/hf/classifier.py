"""MeanPoolClassifier (a sentence-embedding encoder with a new head) and the names of new classification heads."""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from lorakit.hf.checkpointing import enable_checkpointing

HEAD_NAMES = ("classifier", "score")  # new classification heads, trained in full (modules_to_save)


class MeanPoolClassifier(nn.Module):
    """logits = classifier(mean of the encoder's token states over the attention mask).

    How sentence-embedding models (all-MiniLM-L6-v2) are meant to be used; `encoder` is a plain AutoModel.
    Its adapter files describe the encoder (they load onto AutoModel in PEFT); the head is a sidecar file
    (lorakit/io/wrapped.py)."""

    lorakit_base_path = "encoder"

    def __init__(self, encoder: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config  # lorakit's default targets and fingerprint read model.config
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b, s, h)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, s, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (b, h)
        return SequenceClassifierOutput(logits=self.classifier(pooled.to(self.classifier.weight.dtype)))

    def activation_checkpointing_enable(self, **kwargs) -> None:
        enable_checkpointing(self.encoder)


def head_modules(model: nn.Module) -> list[str]:
    """Names of new classification heads to train in full (PEFT does the same for SEQ_CLS)."""
    return [name for name in HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module)]
