"""merge / unmerge / safe_merge / merge_and_unload / unload on whole models."""

import copy

import pytest
import torch

import lorakit
from lorakit.errors import AdapterError, MergeError
from lorakit.inject import lora_layers, trainable_copies
from lorakit.layers.base import LoraLayer
from tests.helpers import TinyConvNet, conv_input, logits, tiny_bert_seq_cls, tiny_gpt2, tiny_llama, token_ids

QV = ["q_proj", "v_proj"]


def adapted_llama(*adapters: tuple[str, int]):
    model = tiny_llama()
    for name, r in adapters:
        cfg = lorakit.LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False)
        lorakit.add_adapter(model, cfg, name)
    return model


def base_weights(model) -> dict[str, torch.Tensor]:
    return {p: layer.base_layer.weight.detach().clone() for p, layer in lora_layers(model)}


def no_lora_modules(model) -> bool:
    return not any(isinstance(m, LoraLayer) for m in model.modules()) and not list(trainable_copies(model))


def test_merge_gives_same_output_and_unmerge_restores_weights() -> None:
    model = adapted_llama(("a", 4))
    w0 = base_weights(model)
    ids = token_ids()
    before = logits(model, ids)
    lorakit.merge_adapter(model)
    assert all(layer.merged_adapters == ["a"] for _, layer in lora_layers(model))
    torch.testing.assert_close(logits(model, ids), before)
    lorakit.unmerge_adapter(model)
    for path, layer in lora_layers(model):
        torch.testing.assert_close(layer.base_layer.weight, w0[path])
        assert layer.merged_adapters == []
    torch.testing.assert_close(logits(model, ids), before)


def test_merge_several_adapters_equals_both_active() -> None:
    model = adapted_llama(("a", 4), ("b", 2))
    lorakit.set_adapter(model, ["a", "b"])
    ids = token_ids()
    both = logits(model, ids)
    lorakit.merge_adapter(model, ["a", "b"])
    torch.testing.assert_close(logits(model, ids), both)


def test_merging_an_inactive_adapter_by_name() -> None:
    model = adapted_llama(("a", 4), ("b", 2))
    lorakit.set_adapter(model, "b")
    ids = token_ids()
    only_b = logits(model, ids)
    lorakit.merge_adapter(model, ["b"])
    torch.testing.assert_close(logits(model, ids), only_b)


def test_safe_merge_refuses_nan_and_leaves_every_layer_unchanged() -> None:
    model = adapted_llama(("a", 4))
    w0 = base_weights(model)
    last_path, last = list(lora_layers(model))[-1]  # earlier layers would merge first
    with torch.no_grad():
        last.lora_B["a"].weight[0, 0] = float("nan")
    with pytest.raises(MergeError, match=f"layer {last_path}: .*NaN/Inf"):
        lorakit.merge_adapter(model, safe_merge=True)
    for path, layer in lora_layers(model):
        assert layer.merged_adapters == []
        assert torch.equal(layer.base_layer.weight, w0[path]), path


def test_safe_merge_refuses_inf_in_the_sum() -> None:
    model = adapted_llama(("a", 4))
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["a"].weight.fill_(3e38)  # finite factors, infinite product
        layer.lora_A["a"].weight.fill_(3e38)
    w0 = layer.base_layer.weight.detach().clone()
    with pytest.raises(MergeError):
        lorakit.merge_adapter(model, safe_merge=True)
    assert torch.equal(layer.base_layer.weight, w0)


def test_merge_grouped_conv_raises_and_keeps_model_unmerged() -> None:
    model = TinyConvNet().eval()
    cfg = lorakit.LoraConfig(r=2, target_modules=["conv", "grouped", "conv1d"], init_lora_weights=False)
    lorakit.add_adapter(model, cfg)
    x = conv_input()
    before = model(x)
    w0 = base_weights(model)
    with pytest.raises(MergeError, match="grouped"):
        lorakit.merge_adapter(model)
    assert all(layer.merged_adapters == [] for _, layer in lora_layers(model))
    assert all(torch.equal(layer.base_layer.weight, w0[p]) for p, layer in lora_layers(model))
    torch.testing.assert_close(model(x), before)


def test_merge_and_unload_returns_plain_model_with_same_outputs() -> None:
    model = adapted_llama(("a", 4))
    klass = type(model)
    ids = token_ids()
    before = logits(model, ids)
    plain = lorakit.merge_and_unload(model)
    assert type(plain) is klass
    assert no_lora_modules(plain)
    assert lorakit.list_adapters(plain) == []
    torch.testing.assert_close(logits(plain, ids), before)


def test_merge_and_unload_keeps_trained_modules_to_save_copy() -> None:
    model = tiny_bert_seq_cls()
    cfg = lorakit.LoraConfig(r=2, target_modules=["query"], modules_to_save=["classifier"], init_lora_weights=False)
    lorakit.add_adapter(model, cfg)
    with torch.no_grad():
        model.classifier.modules_to_save["default"].weight.add_(1.0)
    ids = token_ids()
    before = logits(model, ids)
    plain = lorakit.merge_and_unload(model)
    assert no_lora_modules(plain) and type(plain.classifier) is torch.nn.Linear
    torch.testing.assert_close(logits(plain, ids), before)


def test_unload_returns_original_outputs() -> None:
    model = tiny_bert_seq_cls()
    ids = token_ids()
    original = logits(model, ids)
    cfg = lorakit.LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"],
                             init_lora_weights=False)
    lorakit.add_adapter(model, cfg)
    with torch.no_grad():
        model.classifier.modules_to_save["default"].weight.add_(1.0)
    assert not torch.allclose(logits(model, ids), original)
    plain = lorakit.unload(model)
    assert no_lora_modules(plain)
    torch.testing.assert_close(logits(plain, ids), original)


def test_unload_after_merge_unmerges_first() -> None:
    model = tiny_llama()
    ids = token_ids()
    original = logits(model, ids)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=QV, init_lora_weights=False))
    lorakit.merge_adapter(model)
    torch.testing.assert_close(logits(lorakit.unload(model), ids), original)


def test_set_adapter_while_merged_is_refused() -> None:
    model = adapted_llama(("a", 4), ("b", 2))  # "b", added last, is the active one
    lorakit.merge_adapter(model)
    with pytest.raises(AdapterError, match="unmerge_adapter"):
        lorakit.set_adapter(model, "a")


def test_delete_merged_adapter_is_refused() -> None:
    model = adapted_llama(("a", 4))
    lorakit.merge_adapter(model)
    with pytest.raises(AdapterError, match="unmerge"):
        lorakit.delete_adapter(model, "a")


def test_disable_while_merged_is_refused() -> None:
    model = adapted_llama(("a", 4))
    lorakit.merge_adapter(model)
    with pytest.raises(AdapterError, match="unmerge_adapter"), lorakit.disable_adapters(model):
        pass


def test_merge_twice_is_idempotent() -> None:
    model = adapted_llama(("a", 4))
    ids = token_ids()
    before = logits(model, ids)
    lorakit.merge_adapter(model)
    lorakit.merge_adapter(model)
    torch.testing.assert_close(logits(model, ids), before)


def test_merge_unknown_adapter_is_refused_before_touching_weights() -> None:
    model = adapted_llama(("a", 4))
    w0 = base_weights(model)
    with pytest.raises(AdapterError, match="'zz'"):
        lorakit.merge_adapter(model, ["a", "zz"])
    assert all(torch.equal(layer.base_layer.weight, w0[p]) for p, layer in lora_layers(model))


def test_unmerge_in_fp32_restores_to_float_rounding_after_many_round_trips() -> None:
    model = adapted_llama(("a", 4))
    w0 = base_weights(model)
    for _ in range(5):
        lorakit.merge_adapter(model)
        lorakit.unmerge_adapter(model)
    for path, layer in lora_layers(model):
        torch.testing.assert_close(layer.base_layer.weight, w0[path])


def test_merged_copy_is_independent() -> None:
    model = adapted_llama(("a", 4))
    snapshot = copy.deepcopy(model)
    lorakit.merge_adapter(model)
    assert all(layer.merged_adapters == [] for _, layer in lora_layers(snapshot))


def test_merging_into_a_tied_weight_is_refused() -> None:
    model = tiny_gpt2()  # lm_head.weight is transformer.wte.weight
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["wte"], init_lora_weights=False))
    w0 = model.lm_head.weight.detach().clone()
    with pytest.raises(MergeError, match=r"layer transformer.wte: its weight is tied to \['lm_head.weight'\]"):
        lorakit.merge_adapter(model)
    assert torch.equal(model.lm_head.weight, w0)


def test_lora_bias_without_base_bias_refuses_merge_before_writing() -> None:
    model = tiny_llama()  # q_proj has no bias
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=QV, lora_bias=True, init_lora_weights=False))
    w0 = base_weights(model)
    with pytest.raises(MergeError, match="no bias to merge into"):
        lorakit.merge_adapter(model)
    layer = model.model.layers[0].self_attn.q_proj
    with pytest.raises(MergeError, match="no bias to merge into"):
        layer.merge()  # the layer on its own refuses before touching its weight too
    assert all(torch.equal(layer.base_layer.weight, w0[p]) for p, layer in lora_layers(model))


def test_safe_merge_refuses_nan_lora_bias() -> None:
    model = tiny_bert_seq_cls()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["query"], lora_bias=True))
    layer = model.bert.encoder.layer[1].attention.self.query
    with torch.no_grad():
        layer.lora_B["default"].bias[0] = float("inf")
    b0 = layer.base_layer.bias.detach().clone()
    with pytest.raises(MergeError, match="NaN/Inf"):
        lorakit.merge_adapter(model, safe_merge=True)
    assert torch.equal(layer.base_layer.bias, b0)
