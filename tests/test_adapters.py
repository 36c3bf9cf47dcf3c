"""Adapter lifecycle on whole models: add, activate, disable, delete, trainable flags, modules_to_save."""

import copy

import pytest
import torch
import torch.nn.functional as F

import lorakit
from lorakit.errors import AdapterError
from lorakit.inject import lora_layers, trainable_copies
from lorakit.layers.base import LoraLayer
from tests.helpers import logits, tiny_bert_seq_cls, tiny_llama, token_ids

QV = ["q_proj", "v_proj"]


def cfg(r: int = 4, alpha: float = 8, **kw) -> lorakit.LoraConfig:
    kw.setdefault("target_modules", QV)
    return lorakit.LoraConfig(r=r, lora_alpha=alpha, init_lora_weights=kw.pop("init", False), **kw)


def with_dense_updates(base_model, adapted, names_and_scales: dict[str, float]):
    """A copy of the base model whose targeted weights hold W + sum_a s_a * B_a @ A_a (the reference)."""
    ref = copy.deepcopy(base_model)
    with torch.no_grad():
        for path, layer in lora_layers(adapted):
            weight = ref.get_submodule(path).weight
            for name, scale in names_and_scales.items():
                if name in layer.r:
                    weight += scale * layer.lora_B[name].weight @ layer.lora_A[name].weight
    return ref


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_add_adapter_is_in_place_and_keeps_the_class() -> None:
    model = tiny_llama()
    klass = type(model)
    assert lorakit.add_adapter(model, cfg()) is model
    assert type(model) is klass
    assert isinstance(model.model.layers[0].self_attn.q_proj, LoraLayer)
    assert not isinstance(model.model.layers[0].self_attn.k_proj, LoraLayer)


def test_adapted_model_equals_dense_reference() -> None:
    model = tiny_llama()
    base = copy.deepcopy(model)
    lorakit.add_adapter(model, cfg(r=4, alpha=8))
    ids = token_ids()
    torch.testing.assert_close(logits(model, ids), logits(with_dense_updates(base, model, {"default": 2.0}), ids))


def test_fresh_default_adapter_is_a_no_op() -> None:
    model = tiny_llama()
    ids = token_ids()
    before = logits(model, ids)
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules="all-linear"))
    torch.testing.assert_close(logits(model, ids), before)


def test_adapter_dropout_follows_model_eval_mode() -> None:
    model = tiny_llama()  # in eval mode before injection
    base = copy.deepcopy(model)
    lorakit.add_adapter(model, cfg(lora_dropout=0.5))
    ids = token_ids()
    reference = logits(with_dense_updates(base, model, {"default": 2.0}), ids)
    torch.testing.assert_close(logits(model, ids), reference)  # dropout is off in eval mode
    model.train()
    assert not torch.allclose(logits(model, ids), reference)


def test_first_adapter_freezes_base_and_trains_lora_only() -> None:
    model = tiny_llama()
    lorakit.add_adapter(model, cfg())
    names = trainable_names(model)
    assert names and all(".lora_A.default." in n or ".lora_B.default." in n for n in names)
    assert len(names) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


def test_disabled_equals_base_and_restores_after() -> None:
    model = tiny_llama()
    ids = token_ids()
    base = logits(model, ids)
    lorakit.add_adapter(model, cfg())
    adapted = logits(model, ids)
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(logits(model, ids), base)
    torch.testing.assert_close(logits(model, ids), adapted)


def test_several_active_adapters_equal_sum_of_deltas() -> None:
    model = tiny_llama()
    base = copy.deepcopy(model)
    lorakit.add_adapter(model, cfg(r=4, alpha=8), "a")
    lorakit.add_adapter(model, cfg(r=2, alpha=6, target_modules=["q_proj", "o_proj"]), "b")
    lorakit.set_adapter(model, ["a", "b"])
    ref = with_dense_updates(base, model, {"a": 2.0, "b": 3.0})
    ids = token_ids()
    torch.testing.assert_close(logits(model, ids), logits(ref, ids))


def test_set_adapter_switches_output_and_trainable_flags() -> None:
    model = tiny_llama()
    base = copy.deepcopy(model)
    lorakit.add_adapter(model, cfg(), "a")
    lorakit.add_adapter(model, cfg(r=2, alpha=2), "b", activate=False)
    assert lorakit.active_adapters(model) == ["a"]
    assert all(".a." in n for n in trainable_names(model))
    lorakit.set_adapter(model, "b")
    assert trainable_names(model) and all(".b." in n for n in trainable_names(model))
    ids = token_ids()
    torch.testing.assert_close(logits(model, ids), logits(with_dense_updates(base, model, {"b": 1.0}), ids))


def test_set_adapter_unknown_name_lists_adapters() -> None:
    model = lorakit.add_adapter(tiny_llama(), cfg(), "a")
    with pytest.raises(AdapterError, match=r"'nope'.*\['a'\]"):
        lorakit.set_adapter(model, "nope")


def test_adding_an_existing_name_is_refused() -> None:
    model = lorakit.add_adapter(tiny_llama(), cfg(), "a")
    with pytest.raises(AdapterError, match="'a' already exists"):
        lorakit.add_adapter(model, cfg(), "a")
    assert lorakit.list_adapters(model) == ["a"]


@pytest.mark.parametrize("name", ["", "has space", "dot.ted", "slash/name", 3, "forward", "items", "training"])
def test_invalid_adapter_names_are_refused(name) -> None:
    model = tiny_llama()
    with pytest.raises(AdapterError, match="adapter name"):
        lorakit.add_adapter(model, cfg(), name)
    assert not list(lora_layers(model))


def test_delete_one_of_two_keeps_the_other() -> None:
    model = tiny_llama()
    base = copy.deepcopy(model)
    lorakit.add_adapter(model, cfg(), "a")
    lorakit.add_adapter(model, cfg(r=2, alpha=2), "b")
    lorakit.delete_adapter(model, "b")
    assert lorakit.list_adapters(model) == ["a"]
    assert all(layer.adapter_names == ["a"] for _, layer in lora_layers(model))
    lorakit.set_adapter(model, "a")
    ids = token_ids()
    torch.testing.assert_close(logits(model, ids), logits(with_dense_updates(base, model, {"a": 2.0}), ids))


def test_delete_last_adapter_removes_wrappers() -> None:
    model = tiny_llama()
    ids = token_ids()
    before = logits(model, ids)
    lorakit.add_adapter(model, cfg(), "a")
    lorakit.delete_adapter(model, "a")
    assert not list(lora_layers(model))
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert lorakit.list_adapters(model) == [] and lorakit.active_adapters(model) == []
    torch.testing.assert_close(logits(model, ids), before)


def test_delete_unknown_adapter_is_refused() -> None:
    model = lorakit.add_adapter(tiny_llama(), cfg(), "a")
    with pytest.raises(AdapterError, match="'b'"):
        lorakit.delete_adapter(model, "b")


@pytest.mark.parametrize(("mode", "expected"), [
    ("none", set()),
    ("lora_only", {"classifier"} | {f"bert.encoder.layer.{i}.attention.self.query" for i in (0, 1)}),
])
def test_bias_modes_set_trainable_biases(mode: str, expected: set[str]) -> None:
    model = tiny_bert_seq_cls()
    lorakit.add_adapter(model, cfg(target_modules=["query", "classifier"], bias=mode))
    biases = {n.rsplit(".", 1)[0].replace(".base_layer", "") for n in trainable_names(model) if n.endswith(".bias")}
    assert biases == expected


def test_bias_all_trains_every_bias_but_lora_ones() -> None:
    model = tiny_bert_seq_cls()
    lorakit.add_adapter(model, cfg(target_modules=["query"], bias="all"))
    all_biases = {n for n, _ in model.named_parameters() if n.endswith("bias")}
    trained = {n for n in trainable_names(model) if n.endswith("bias")}
    assert trained == all_biases and len(trained) > 10


def test_modules_to_save_copy_trains_and_original_stays() -> None:
    model = tiny_bert_seq_cls()
    lorakit.add_adapter(model, cfg(target_modules=["query"], modules_to_save=["classifier"]), "a")
    head = model.classifier
    original = head.original_module.weight.detach().clone()
    assert head.modules_to_save["a"].weight.requires_grad
    assert not head.original_module.weight.requires_grad
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model(token_ids(), labels=torch.tensor([0, 2]))
    out.loss.backward()
    opt.step()
    assert not torch.equal(head.modules_to_save["a"].weight, original)
    assert torch.equal(head.original_module.weight, original)


def test_modules_to_save_copy_runs_only_when_its_adapter_is_active() -> None:
    model = tiny_bert_seq_cls()
    lorakit.add_adapter(model, cfg(target_modules=["query"], modules_to_save=["classifier"]), "a")
    lorakit.add_adapter(model, cfg(target_modules=["query"]), "b", activate=False)
    head = model.classifier
    with torch.no_grad():
        head.modules_to_save["a"].weight.add_(1.0)
    x = torch.randn(2, 32)
    torch.testing.assert_close(head(x), F.linear(x, head.modules_to_save["a"].weight, head.modules_to_save["a"].bias))
    lorakit.set_adapter(model, "b")
    torch.testing.assert_close(head(x), head.original_module(x))
    lorakit.set_adapter(model, "a")
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(head(x), head.original_module(x))


def test_modules_to_save_deleted_with_last_adapter() -> None:
    model = tiny_bert_seq_cls()
    lorakit.add_adapter(model, cfg(target_modules=["query"], modules_to_save=["classifier"]), "a")
    lorakit.delete_adapter(model, "a")
    assert not list(trainable_copies(model))
    assert type(model.classifier) is torch.nn.Linear


def test_inference_mode_adapter_is_frozen() -> None:
    model = lorakit.add_adapter(tiny_llama(), cfg(inference_mode=True))
    assert trainable_names(model) == set()


def test_get_config_returns_the_config() -> None:
    config = cfg()
    model = lorakit.add_adapter(tiny_llama(), config, "a")
    assert lorakit.get_config(model, "a") is config
    with pytest.raises(AdapterError, match=r"\['a'\]"):
        lorakit.get_config(model, "default")


def test_wrapped_layers_expose_the_base_weight_and_bias():
    """Code written for the plain model reads module.weight (get_input_embeddings().weight, tied-weight checks)."""
    model = tiny_llama()
    embed, head = model.get_input_embeddings().weight, model.model.layers[0].self_attn.q_proj
    base_q_weight = head.weight
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["embed_tokens", "q_proj", "o_proj"]))
    assert isinstance(model.get_input_embeddings(), LoraLayer)
    assert model.get_input_embeddings().weight is embed
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight is base_q_weight and q.bias is q.base_layer.bias
    # a property, not a parameter: no duplicate in parameters / state_dict, nothing new to train
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("q_proj.weight") for n in names)
    assert "model.layers.0.self_attn.q_proj.weight" not in model.state_dict()


def test_bias_all_leaves_the_replaced_head_frozen() -> None:
    """With modules_to_save the original head no longer runs: its bias would count as trainable and never learn."""
    model = tiny_bert_seq_cls()
    lorakit.add_adapter(model, cfg(target_modules=["query"], bias="all", modules_to_save=["classifier"]))
    head = model.classifier
    assert head.modules_to_save["default"].bias.requires_grad
    assert not head.original_module.bias.requires_grad
    trained = {n for n in trainable_names(model) if n.endswith("bias")}
    frozen = {n for n, _ in model.named_parameters() if n.endswith("bias")} - trained
    assert frozen == {"classifier.original_module.bias"}


# -- autocast_adapter_dtype=False: adapters in a 16-bit base's dtype --------------------------------------------
def test_16_bit_adapters_keep_the_base_dtype_and_equal_the_formula() -> None:
    model = tiny_llama().to(torch.bfloat16)
    base = copy.deepcopy(model)
    lorakit.add_adapter(model, cfg(target_modules="all-linear"), autocast_adapter_dtype=False)
    dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert dtypes == {torch.bfloat16}
    assert trainable_names(model) == {n for n, _ in model.named_parameters() if "lora_" in n}
    ids = token_ids()
    want = logits(with_dense_updates(base.float(), model, {"default": 2.0}), ids)  # exact, from the same weights
    torch.testing.assert_close(logits(model, ids).float(), want, atol=0.05, rtol=0.05)


def test_16_bit_adapters_are_fp32_by_default_and_over_an_fp32_base() -> None:
    model = tiny_llama().to(torch.bfloat16)
    lorakit.add_adapter(model, cfg())
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    model = tiny_llama()
    lorakit.add_adapter(model, cfg(), autocast_adapter_dtype=False)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}


def test_16_bit_dora_is_refused_and_the_model_untouched() -> None:
    model = tiny_llama().to(torch.bfloat16)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(AdapterError, match="DoRA adapters stay in fp32"):
        lorakit.add_adapter(model, cfg(use_dora=True), autocast_adapter_dtype=False)
    assert not list(lora_layers(model)) and not lorakit.list_adapters(model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_16_bit_adapters_load_from_a_file_as_the_rounded_fp32_weights(tmp_path) -> None:
    trained = tiny_llama().to(torch.bfloat16)
    lorakit.add_adapter(trained, cfg())  # fp32 adapter, as training leaves it
    lorakit.save_adapter(trained, tmp_path)
    model = lorakit.load_adapter(tiny_llama().to(torch.bfloat16), tmp_path, autocast_adapter_dtype=False)
    saved = lorakit.adapter_state_dict(trained)
    loaded = lorakit.adapter_state_dict(model)
    assert set(loaded) == set(saved)
    for key, value in loaded.items():
        assert value.dtype == torch.bfloat16
        torch.testing.assert_close(value, saved[key].to(torch.bfloat16), rtol=0, atol=0)
