"""Which layers get an adapter: names, suffixes, regex, all-linear, exclusions, layer subsets, patterns, errors."""

import pytest
import torch
from torch import nn

import lorakit
from lorakit.errors import AdapterError, TargetError
from lorakit.inject import find_targets, lora_layers
from tests.helpers import TinyConvNet, tiny_bert_seq_cls, tiny_gpt2, tiny_llama

LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def targets(model: nn.Module, **kw) -> list[str]:
    return find_targets(model, lorakit.LoraConfig(**kw))


def adapted_paths(model: nn.Module) -> list[str]:
    return [p for p, _ in lora_layers(model)]


def leaves(paths: list[str]) -> set[str]:
    return {p.rsplit(".", 1)[-1] for p in paths}


def test_exact_path_selects_only_that_layer() -> None:
    assert targets(tiny_llama(), target_modules=["model.layers.1.self_attn.q_proj"]) == [
        "model.layers.1.self_attn.q_proj"
    ]


def test_name_matches_as_dotted_suffix() -> None:
    model = tiny_llama()
    assert targets(model, target_modules=["q_proj"]) == [f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)]
    assert targets(model, target_modules=["self_attn.o_proj"]) == [f"model.layers.{i}.self_attn.o_proj" for i in (0, 1)]


def test_suffix_must_start_at_a_dot() -> None:
    with pytest.raises(TargetError):
        targets(tiny_llama(), target_modules=["proj"])  # "q_proj" ends with "proj" but not with ".proj"


def test_regex_string_must_match_the_whole_path() -> None:
    model = tiny_llama()
    assert targets(model, target_modules=r".*\.0\.self_attn\.(q|v)_proj") == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
    ]
    with pytest.raises(TargetError, match="matched no layer"):
        targets(model, target_modules="q_proj")  # a regex that matches only part of the path


def test_all_linear_excludes_the_output_head() -> None:
    paths = targets(tiny_llama(), target_modules="all-linear")
    assert leaves(paths) == set(LLAMA_LINEARS)
    assert len(paths) == 2 * len(LLAMA_LINEARS)
    assert "lm_head" not in paths


def test_all_linear_on_gpt2_takes_conv1d_and_skips_tied_head() -> None:
    paths = targets(tiny_gpt2(), target_modules="all-linear")
    assert leaves(paths) == {"c_attn", "c_proj", "c_fc"}
    assert "lm_head" not in paths


def test_all_linear_excludes_modules_to_save() -> None:
    paths = targets(tiny_bert_seq_cls(), target_modules="all-linear", modules_to_save=["classifier"])
    assert "classifier" not in paths
    assert "bert.pooler.dense" in paths


def test_named_target_inside_modules_to_save_is_skipped() -> None:
    # PEFT never puts an adapter inside a module it trains in full; doing so would wrap the layer twice
    model = tiny_bert_seq_cls()
    cfg = lorakit.LoraConfig(target_modules=["query", "classifier"], modules_to_save=["classifier"])
    assert "classifier" not in find_targets(model, cfg)
    lorakit.add_adapter(model, cfg)
    assert type(model.classifier.original_module) is nn.Linear


def test_exclude_modules_list_and_regex() -> None:
    model = tiny_llama()
    paths = targets(model, target_modules="all-linear", exclude_modules=["mlp.down_proj", "k_proj"])
    assert leaves(paths) == set(LLAMA_LINEARS) - {"down_proj", "k_proj"}
    paths = targets(model, target_modules=["q_proj", "v_proj"], exclude_modules=r"model\.layers\.0\..*")
    assert paths == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_layers_to_transform_with_default_pattern() -> None:
    assert targets(tiny_llama(), target_modules=["q_proj"], layers_to_transform=[1]) == [
        "model.layers.1.self_attn.q_proj"
    ]
    assert targets(tiny_gpt2(), target_modules=["c_attn"], layers_to_transform=0) == ["transformer.h.0.attn.c_attn"]
    assert targets(tiny_bert_seq_cls(), target_modules=["query"], layers_to_transform=[1]) == [
        "bert.encoder.layer.1.attention.self.query"
    ]


def test_layers_to_transform_with_explicit_pattern() -> None:
    model = tiny_llama()
    assert targets(model, target_modules=["v_proj"], layers_to_transform=[0], layers_pattern="layers") == [
        "model.layers.0.self_attn.v_proj"
    ]
    with pytest.raises(TargetError, match="layers_to_transform"):
        targets(model, target_modules=["v_proj"], layers_to_transform=[0], layers_pattern="blocks")


def test_rank_and_alpha_patterns_apply_per_module() -> None:
    model = tiny_llama()
    cfg = lorakit.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
        rank_pattern={r"layers\.1\.self_attn\.q_proj": 2, "v_proj": 6}, alpha_pattern={"q_proj": 3},
    )
    lorakit.add_adapter(model, cfg)
    attn = [model.model.layers[i].self_attn for i in (0, 1)]
    assert [a.q_proj.r["default"] for a in attn] == [4, 2]
    assert [a.v_proj.r["default"] for a in attn] == [6, 6]
    assert attn[0].q_proj.scaling["default"] == pytest.approx(3 / 4)
    assert attn[1].q_proj.scaling["default"] == pytest.approx(3 / 2)
    assert attn[0].v_proj.scaling["default"] == pytest.approx(8 / 6)
    assert attn[1].q_proj.lora_A["default"].weight.shape == (2, 32)


def test_pattern_key_matches_a_dotted_suffix_only() -> None:
    cfg = lorakit.LoraConfig(r=4, rank_pattern={"proj": 2, "0.self_attn.q_proj": 3})
    assert cfg.rank_for("model.layers.0.self_attn.q_proj") == 3  # "proj" is not a dotted suffix of "..q_proj"
    assert cfg.rank_for("model.layers.0.mlp.proj") == 2
    assert cfg.rank_for("model.layers.10.self_attn.q_proj") == 4


@pytest.mark.parametrize(("build", "expected"), [
    (tiny_llama, {"q_proj", "v_proj"}),
    (tiny_gpt2, {"c_attn"}),
    (tiny_bert_seq_cls, {"query", "value"}),
])
def test_default_targets_per_architecture(build, expected: set[str]) -> None:
    model = build()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2))
    paths = adapted_paths(model)
    assert leaves(paths) == expected and len(paths) == 2 * len(expected)


def test_no_default_for_unknown_architecture_lists_linears() -> None:
    with pytest.raises(TargetError, match=r"no default target_modules.*\['head'\]"):
        targets(TinyConvNet())


def test_target_matching_nothing_lists_linear_layers() -> None:
    model = tiny_llama()
    with pytest.raises(TargetError) as info:
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["query"]))
    message = str(info.value)
    assert "target_modules=['query'] matched no layer" in message
    assert all(name in message for name in [*LLAMA_LINEARS, "lm_head"])
    assert not adapted_paths(model)


def test_unsupported_layer_type_is_named() -> None:
    with pytest.raises(TargetError, match=r"LlamaRMSNorm.*cannot adapt"):
        targets(tiny_llama(), target_modules=["input_layernorm"])


def test_failed_add_leaves_model_trainable_and_unwrapped() -> None:
    model = tiny_llama()
    with pytest.raises(TargetError):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["nothing_here"]))
    assert all(p.requires_grad for p in model.parameters())
    assert lorakit.list_adapters(model) == []


def test_failure_half_way_through_injection_rolls_back() -> None:
    model = tiny_llama()
    # q_proj (32 outputs) takes r=20, k_proj (16 outputs) cannot: PiSSA needs r <= min(weight shape)
    cfg = lorakit.LoraConfig(r=20, target_modules=["q_proj", "k_proj"], init_lora_weights="pissa")
    w0 = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    with pytest.raises(lorakit.ConfigError, match="r <= min"):
        lorakit.add_adapter(model, cfg)
    assert not adapted_paths(model)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, w0)
    assert all(p.requires_grad for p in model.parameters())


def test_second_adapter_can_target_other_layers() -> None:
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"]), "a")
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj", "o_proj"]), "b")
    layers = dict(lora_layers(model))
    assert layers["model.layers.0.self_attn.q_proj"].adapter_names == ["a", "b"]
    assert layers["model.layers.0.self_attn.o_proj"].adapter_names == ["b"]


def test_subclass_of_linear_dispatches_to_lora_linear() -> None:
    class MyLinear(nn.Linear):
        pass

    assert targets(nn.Sequential(MyLinear(4, 4)), target_modules=["0"]) == ["0"]


class PlainLinear(nn.Module):
    """A linear layer lorakit does not know (not an nn.Linear subclass)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def test_register_layer_type_teaches_a_new_layer(monkeypatch) -> None:
    from lorakit import inject
    from lorakit.layers.linear import LoraLinear

    model = nn.Sequential(PlainLinear())
    with pytest.raises(TargetError, match="PlainLinear, which LoRA cannot adapt"):
        targets(model, target_modules=["0"])
    monkeypatch.setattr(inject, "LAYER_TYPES", dict(inject.LAYER_TYPES))  # undone after the test
    monkeypatch.setattr(inject, "LINEAR_TYPES", set(inject.LINEAR_TYPES))
    lorakit.register_layer_type(PlainLinear, LoraLinear, linear=True)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    layer = model[0]
    x = torch.randn(5, 4)
    expected = x @ (layer.base_layer.weight + layer.delta_weight("default")).T
    torch.testing.assert_close(model(x), expected)


def test_adapter_name_collision_message() -> None:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(target_modules=["q_proj"]), "x")
    with pytest.raises(AdapterError, match="already exists"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["v_proj"]), "x")
    assert "v_proj" not in leaves(adapted_paths(model))
