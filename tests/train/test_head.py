"""CausalLM.loss_sum runs the LM head on the target positions only (train/head.py): the loss and the LoRA gradients
equal those of the full logits through F.cross_entropy (the reference), on padded and packed batches, and a model
whose forward does not take `logits_to_keep` gets the full logits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import lorakit
from lorakit.train.data import IGNORE, collate, pack
from lorakit.train.tasks import CausalLM
from tests.helpers import VOCAB, tiny_gpt2, tiny_llama

TASK = CausalLM()


def chat_like(n: int = 6, seed: int = 0) -> list[dict]:
    """Examples of 5..16 tokens whose last few tokens only are trained (a prompt, then an answer)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        size = int(torch.randint(5, 17, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (size,), generator=g).tolist()
        answer = int(torch.randint(1, 4, (1,), generator=g))
        labels = [IGNORE] * (size - answer) + ids[-answer:]
        out.append({"input_ids": ids, "attention_mask": [1] * size, "labels": labels})
    return out


def with_lora(model: torch.nn.Module) -> torch.nn.Module:
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return lorakit.add_adapter(model, config).train()


def reference_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The full logits of every position, then F.cross_entropy (summed)."""
    logits, targets = TASK.logits_and_targets(model, batch)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")


def loss_and_grads(model: torch.nn.Module, batch: dict, loss_fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def gpt2_without_dropout() -> torch.nn.Module:
    return tiny_gpt2(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # the two losses must see the same network


@pytest.mark.parametrize("make", [tiny_llama, gpt2_without_dropout], ids=["llama", "gpt2"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_target_only_head_gives_the_full_logits_loss_and_gradients(make, packed):
    model = with_lora(make())
    data = chat_like()
    batch = collate(pack(data, 24) if packed else data, pad_token_id=0)
    seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    loss, grads = loss_and_grads(model, batch, TASK.loss_sum)
    handle.remove()
    expected, expected_grads = loss_and_grads(model, batch, reference_loss)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    targets = sum(TASK.loss_units(e) for e in data)
    assert seen == [torch.Size([targets, VOCAB])]  # guard: the head computed the target rows only


class NoKeepArgument(torch.nn.Module):
    """A causal LM whose forward has no logits_to_keep (custom code): it gets the full logits."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_llama()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.inner.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_a_forward_without_logits_to_keep_gets_the_full_logits():
    model = NoKeepArgument()
    batch = collate(chat_like(), pad_token_id=0)
    expected = reference_loss(copy.deepcopy(model), batch)
    seen = []
    model.inner.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dim()))
    with torch.no_grad():
        torch.testing.assert_close(TASK.loss_sum(model, batch), expected)
    assert seen == [3]  # (batch, seq, vocab): the head ran on every position
