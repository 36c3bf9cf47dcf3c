"""LongLoRA: S²-Attn against a direct masked-attention reference, full attention at inference, trainable norms."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorakit
from lorakit.errors import TargetError
from lorakit.variants import LongLoraConfig, disable_s2_attn, enable_s2_attn, prepare_longlora, s2_attention, s2_attn
from lorakit.variants.longlora import longlora_modules_to_save
from tests.helpers import logits, tiny_llama, token_ids
from tests.variants.loop import train_steps


def reference(q, k, v, group: int, key_padding=None):
    """Head by head: token i sees j <= i of its own group; groups are [kG, (k+1)G) for the first half of the heads,
    [G/2 + kG, G/2 + (k+1)G) (plus [0, G/2)) for the second half. `key_padding`: (B, N), True = real token."""
    batch, heads, n, dim = q.shape
    k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    pos = torch.arange(n)
    out = torch.empty_like(q)
    for h in range(heads):
        group_id = pos // group if h < heads // 2 else (pos + group - group // 2) // group
        allowed = (group_id[:, None] == group_id[None, :]) & (pos[None, :] <= pos[:, None])
        scores = q[:, h] @ k[:, h].transpose(-1, -2) / math.sqrt(dim)  # (B, N, N)
        mask = allowed.expand(batch, n, n)
        if key_padding is not None:
            mask = mask & key_padding[:, None, :]
        out[:, h] = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v[:, h]
    return out


def qkv(batch=2, heads=4, kv_heads=4, n=16, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, n, dim, generator=g), torch.randn(batch, kv_heads, n, dim, generator=g),
            torch.randn(batch, kv_heads, n, dim, generator=g))


@pytest.mark.parametrize(("n", "group", "kv_heads"), [(16, 4, 4), (14, 4, 4), (12, 8, 4), (16, 4, 2), (24, 6, 1)])
def test_s2_attention_matches_direct_reference(n, group, kv_heads) -> None:
    q, k, v = qkv(n=n, kv_heads=kv_heads)
    torch.testing.assert_close(s2_attention(q, k, v, group), reference(q, k, v, group))


@pytest.mark.parametrize("group", [16, 32])
def test_group_covering_the_sequence_is_full_causal_attention(group) -> None:
    q, k, v = qkv(n=16)
    pos = torch.arange(16)
    causal = pos[None, :] <= pos[:, None]
    scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~causal, float("-inf"))
    torch.testing.assert_close(s2_attention(q, k, v, group), scores.softmax(-1) @ v)


def test_padding_mask_matches_reference_on_real_tokens() -> None:
    q, k, v = qkv(n=16)
    real = torch.ones(2, 16, dtype=torch.bool)
    real[0, :3] = False  # left padding in the first row
    pos = torch.arange(16)
    mask = (pos[None, :] <= pos[:, None])[None, None] & real[:, None, None, :]  # (B, 1, N, N), as SDPA gets it
    ours = s2_attention(q, k, v, 4, attention_mask=mask)
    expected = reference(q, k, v, 4, key_padding=real)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[0, :, 3:], expected[0, :, 3:])
    torch.testing.assert_close(ours[1], expected[1])


def test_no_token_sees_a_later_token() -> None:
    """The paper's code rolls the shifted heads, so its first tokens see the last ones; here nothing looks ahead."""
    q, k, v = qkv(n=16)
    k.requires_grad_(True)
    out = s2_attention(q, k, v, 4)
    for i in (0, 1, 5, 15):
        (grad,) = torch.autograd.grad(out[:, :, i].sum(), k, retain_graph=True)
        assert torch.count_nonzero(grad[:, :, i + 1:]) == 0


# -- on a model ----------------------------------------------------------------------------------------------------
def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    out = reference(query, key, value, module.lorakit_test_group)
    return out.transpose(1, 2).contiguous(), None


def test_model_uses_s2_attn_only_while_training() -> None:
    from transformers import AttentionInterface

    model = tiny_llama(max_position_embeddings=64)
    ids = token_ids(seq=16)
    full_eval = logits(model, ids)
    with torch.no_grad():
        full_train = model.train()(ids).logits
    enable_s2_attn(model, LongLoraConfig(group_size=4))
    model.eval()
    torch.testing.assert_close(logits(model, ids), full_eval)  # inference: full attention
    model.train()
    with torch.no_grad():
        patched = model(ids).logits
    assert not torch.allclose(patched, full_train, atol=1e-3)
    # the same model with the reference attention in every layer gives the same logits
    AttentionInterface.register("lorakit_test_reference", reference_attention)
    disable_s2_attn(model)
    model.set_attn_implementation("lorakit_test_reference")
    for module in model.modules():
        module.lorakit_test_group = 4
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, patched)


def test_ratio_gives_full_attention_when_one_group_fits_and_disable_restores() -> None:
    model = tiny_llama().train()
    ids = token_ids(seq=16)
    with torch.no_grad():
        full = model(ids).logits
    with s2_attn(model, LongLoraConfig(group_size_ratio=1.0)):
        assert model.config._attn_implementation == "lorakit_s2_attn"
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, full)
    assert model.config._attn_implementation == "sdpa"


def test_embeddings_and_norms_become_trainable_and_training_lowers_the_loss() -> None:
    model = tiny_llama(max_position_embeddings=64)
    assert longlora_modules_to_save(model) == ["embed_tokens", "input_layernorm", "norm", "post_attention_layernorm"]
    prepare_longlora(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                     LongLoraConfig(group_size=8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in n for n in trainable)
    assert any("input_layernorm.modules_to_save" in n for n in trainable)
    assert any("model.norm.modules_to_save" in n for n in trainable)
    losses = train_steps(model, token_ids(batch=4, seq=32), steps=10, lr=2e-2)
    assert losses[-1] < 0.9 * losses[0]


def test_models_without_transformers_attention_are_refused() -> None:
    with pytest.raises(TargetError, match="AttentionInterface"):
        enable_s2_attn(nn.Sequential(nn.Linear(4, 4)))


def test_sdpa_reference_sanity() -> None:
    """The reference itself: its unshifted head with one group is F.scaled_dot_product_attention(is_causal=True)."""
    q, k, v = qkv(heads=2, kv_heads=2, n=8)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(reference(q, k, v, 8)[:, 0], full[:, 0])
