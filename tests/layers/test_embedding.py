"""LoraEmbedding against F.embedding with the table W + s * (B @ A).T."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorakit
from lorakit.errors import ConfigError
from lorakit.layers.base import AdapterSpec
from lorakit.layers.embedding import LoraEmbedding
from tests.helpers import logits, tiny_llama, token_ids


def make_layer(init: bool | str = False, padding_idx: int | None = None) -> LoraEmbedding:
    layer = LoraEmbedding(nn.Embedding(20, 6, padding_idx=padding_idx))
    layer.add_adapter("a", AdapterSpec(r=3, lora_alpha=6, init_lora_weights=init))
    layer.set_active(["a"])
    return layer


def test_shapes_follow_peft() -> None:
    layer = make_layer()
    a, b = layer.lora_weights("a")
    assert a.shape == (3, 20) and b.shape == (6, 3)


def test_forward_equals_lookup_in_updated_table() -> None:
    layer = make_layer()
    a, b = layer.lora_embedding_A["a"], layer.lora_embedding_B["a"]
    ids = torch.randint(0, 20, (2, 9))
    expected = F.embedding(ids, layer.base_layer.weight + 2.0 * (b @ a).T)
    torch.testing.assert_close(layer(ids), expected)


def test_padding_idx_row_gets_the_update_like_any_row() -> None:
    # padding_idx only stops the gradient; the forward looks the row up like any other (as PEFT does)
    layer = make_layer(padding_idx=0)
    a, b = layer.lora_weights("a")
    ids = torch.tensor([[0, 1, 0, 5]])
    torch.testing.assert_close(layer(ids), F.embedding(ids, layer.base_layer.weight + 2.0 * (b @ a).T))


@pytest.mark.parametrize("init", [True, "gaussian"])
def test_fresh_adapter_is_a_no_op(init: bool | str) -> None:
    layer = make_layer(init=init)
    ids = torch.randint(0, 20, (4,))
    torch.testing.assert_close(layer(ids), layer.base_layer(ids))
    # still trainable: the zero factor gets a gradient
    layer(ids).sum().backward()
    assert layer.lora_embedding_A["a"].grad.abs().sum() > 0


def test_merge_and_unmerge_round_trip() -> None:
    layer = make_layer()
    w0 = layer.base_layer.weight.detach().clone()
    ids = torch.randint(0, 20, (3, 4))
    before = layer(ids)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, w0 + layer.delta_weight("a"))
    torch.testing.assert_close(layer(ids), before)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0)


def test_disabled_gives_base_output() -> None:
    layer = make_layer()
    layer.disable_adapters = True
    ids = torch.randint(0, 20, (5,))
    torch.testing.assert_close(layer(ids), F.embedding(ids, layer.base_layer.weight))


def test_lora_bias_is_refused() -> None:
    layer = LoraEmbedding(nn.Embedding(20, 6))
    with pytest.raises(ConfigError, match="lora_bias"):
        layer.add_adapter("a", AdapterSpec(r=2, lora_alpha=2, lora_bias=True))


def test_pissa_is_refused_with_a_clear_error() -> None:
    layer = LoraEmbedding(nn.Embedding(20, 6))
    with pytest.raises(ConfigError, match="Embedding"):
        layer.add_adapter("a", AdapterSpec(r=2, lora_alpha=2, init_lora_weights="pissa"))


def test_llama_embed_tokens_adapter_changes_logits_and_merges() -> None:
    model = tiny_llama()
    ids = token_ids()
    base = logits(model, ids)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["embed_tokens"], init_lora_weights=False))
    adapted = logits(model, ids)
    assert not torch.allclose(adapted, base)
    lorakit.merge_adapter(model)
    torch.testing.assert_close(logits(model, ids), adapted)
