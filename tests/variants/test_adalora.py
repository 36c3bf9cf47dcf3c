"""AdaLoRA: the SVD-form layer, importance, the cubic budget, the pure allocator, and a tiny training run."""

import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorakit
from lorakit.errors import ConfigError, TargetError
from lorakit.variants import AdaLoraConfig, AdaLoraHook, allocate_ranks, budget_schedule, hooks_for, plot_ranks
from lorakit.variants.adalora import Importance, adalora_layers, rank_per_layer
from lorakit.variants.adalora_layer import AdaLoraLinear
from tests.helpers import tiny_gpt2, tiny_llama, token_ids
from tests.variants.loop import train_steps


def adalora_model(init_lora_weights=False, **overrides):
    model = tiny_llama()
    settings = dict(init_r=4, target_r=2, lora_alpha=8, total_step=12, tinit=2, tfinal=3,
                    target_modules=["q_proj", "v_proj"], init_lora_weights=init_lora_weights)
    settings.update(overrides)
    lorakit.add_adapter(model, AdaLoraConfig(**settings))
    return model


# -- the pure allocator on hand-made scores ------------------------------------------------------------------------
def test_allocator_gives_more_rank_to_more_important_layers_and_meets_the_budget() -> None:
    scores = {
        "low": torch.tensor([0.1, 0.2, 0.05, 0.3]),
        "high": torch.tensor([5.0, 4.0, 3.0, 0.15]),
        "mid": torch.tensor([1.0, 0.25, 2.0, 0.01]),
    }
    masks = allocate_ranks(scores, budget=6)
    ranks = {name: int(m.sum()) for name, m in masks.items()}
    assert sum(ranks.values()) == 6
    assert ranks["high"] > ranks["mid"] > ranks["low"]
    # exactly the six largest scores survive
    kept = sorted(float(s) for name in scores for s, k in zip(scores[name], masks[name], strict=True) if k)
    assert kept == sorted(torch.cat(list(scores.values())).topk(6).values.tolist())


def test_allocator_breaks_ties_deterministically_and_checks_the_budget() -> None:
    scores = {"a": torch.ones(3), "b": torch.ones(3)}
    masks = allocate_ranks(scores, budget=4)
    assert masks["a"].tolist() == [True, True, True] and masks["b"].tolist() == [True, False, False]
    assert sum(int(m.sum()) for m in allocate_ranks(scores, 0).values()) == 0
    with pytest.raises(ConfigError, match="budget 7"):
        allocate_ranks(scores, 7)


def test_budget_schedule_is_constant_then_cubic_then_target() -> None:
    kw = dict(init_budget=48, target_budget=16, tinit=10, tfinal=20, total_step=100)
    assert budget_schedule(5, **kw) == (48, False)
    assert budget_schedule(10, **kw) == (48, False)
    for step in (11, 40, 79):
        progress = (step - 10) / (100 - 20 - 10)
        assert budget_schedule(step, **kw)[0] == int(32 * (1 - progress) ** 3 + 16)
    assert budget_schedule(90, **kw) == (16, True)
    assert budget_schedule(41, **kw, delta_t=2) == (budget_schedule(41, **kw)[0], False)


def test_importance_is_smoothed_sensitivity_times_uncertainty() -> None:
    imp = Importance(beta1=0.8, beta2=0.7)
    p, g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5]), torch.tensor([-1.0, 0.25])
    imp.update("w", p, g1)
    imp.update("w", p, g2)
    i1, i2 = (p * g1).abs(), (p * g2).abs()
    s1 = 0.2 * i1
    s2 = 0.8 * s1 + 0.2 * i2
    u1 = 0.3 * (i1 - s1).abs()
    u2 = 0.7 * u1 + 0.3 * (i2 - s2).abs()
    torch.testing.assert_close(imp.score("w"), s2 * u2)


def test_triplet_score_sums_value_and_mean_vector_scores() -> None:
    imp = Importance(0.5, 0.5)
    for key, shape in (("l.lora_E", (2, 1)), ("l.lora_A", (2, 3)), ("l.lora_B", (4, 2))):
        imp.sensitivity[key], imp.uncertainty[key] = torch.rand(shape), torch.rand(shape)
    expected = imp.score("l.lora_E").view(-1) + imp.score("l.lora_A").mean(1) + imp.score("l.lora_B").mean(0)
    torch.testing.assert_close(imp.triplet_scores("l"), expected)


# -- the layer ---------------------------------------------------------------------------------------------------------
def test_svd_layer_equals_dense_formula_and_merges() -> None:
    layer = AdaLoraLinear(nn.Linear(6, 5))
    layer.add_svd_adapter("a", lorakit.layers.base.AdapterSpec(r=3, lora_alpha=4, init_lora_weights=False), 3)
    layer.set_active(["a"])
    p, e, q = layer.lora_B["a"], layer.lora_E["a"], layer.lora_A["a"]
    delta = p @ torch.diag(e.view(-1)) @ q * 4 / (3 + 1e-5)
    x = torch.randn(2, 6)
    expected = F.linear(x, layer.base_layer.weight + delta, layer.base_layer.bias)
    torch.testing.assert_close(layer(x), expected)
    layer.merge(["a"])
    torch.testing.assert_close(layer(x), expected)


def test_orthogonality_is_the_papers_squared_frobenius_sum() -> None:
    model = adalora_model()
    layers = adalora_layers(model, "default")
    hook = AdaLoraHook(model, lorakit.get_config(model))
    terms = []
    for _, layer in layers:
        p, q = layer.lora_B["default"], layer.lora_A["default"]
        terms.append(((p.T @ p - torch.eye(4)) ** 2).sum() + ((q @ q.T - torch.eye(4)) ** 2).sum())
    torch.testing.assert_close(hook.extra_loss(model, 0), 0.5 * torch.stack(terms).mean())


def test_fresh_adapter_is_a_no_op_and_layers_are_svd_layers() -> None:
    model = adalora_model(init_lora_weights=True)
    ids = token_ids()
    ref = tiny_llama()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)
    assert {type(m) for _, m in adalora_layers(model, "default")} == {AdaLoraLinear}
    assert len(adalora_layers(model, "default")) == 4


def test_conv1d_layers_are_adapted_with_fan_in_fan_out() -> None:
    model = tiny_gpt2()
    lorakit.add_adapter(model, AdaLoraConfig(init_r=3, target_r=1, total_step=5, target_modules=["c_attn"],
                                             init_lora_weights=False))
    (_, layer), *_ = adalora_layers(model, "default")
    x = torch.randn(2, 32)
    torch.testing.assert_close(layer(x), layer.base_layer(x) + F.linear(x, layer.delta_weight("default").T))


# -- training ------------------------------------------------------------------------------------------------------
def test_training_prunes_to_the_target_budget_and_lowers_the_loss() -> None:
    model = adalora_model(init_lora_weights=True)
    (hook,) = hooks_for(model, {})
    losses = train_steps(model, token_ids(batch=4, seq=16), steps=12, hooks=[hook])
    assert losses[-1] < losses[0]
    ranks = rank_per_layer(model)
    assert sum(ranks.values()) == 2 * 4  # target_r * layers
    pattern = lorakit.get_config(model).rank_pattern
    assert {p: sum(k) for p, k in pattern.items()} == ranks
    for path, layer in adalora_layers(model, "default"):  # pruned singular values stay exactly zero
        keep = torch.tensor(pattern[path])
        assert torch.count_nonzero(layer.lora_E["default"][~keep]) == 0


def test_hook_allocates_by_importance_on_a_tiny_model() -> None:
    """Hand-made importance: layer i has level i + 1, except one q_proj at level 10; it must keep its full rank,
    the least important layer must lose all, and the total must meet the budget."""
    model = adalora_model(total_step=10, tinit=0, tfinal=0)
    hook = AdaLoraHook(model, lorakit.get_config(model))
    spread = torch.linspace(1, 2, 4)  # triplets within a layer differ a little
    levels = {}
    for i, (path, _) in enumerate(adalora_layers(model, "default")):
        levels[path] = 10.0 if path == "model.layers.0.self_attn.v_proj" else i + 1.0
        for kind, per_triplet in (("lora_E", spread.view(4, 1)), ("lora_A", spread.view(4, 1).expand(4, 32)),
                                  ("lora_B", spread.view(1, 4).expand(32, 4))):
            hook.importance.sensitivity[f"{path}.{kind}"] = torch.full(per_triplet.shape, levels[path])
            hook.importance.uncertainty[f"{path}.{kind}"] = per_triplet.clone()
    hook.on_step_end(model, hook.final_step)
    ranks = rank_per_layer(model)
    assert sum(ranks.values()) == hook.target_budget == 8
    order = sorted(levels, key=levels.get)
    assert [ranks[p] for p in order] == sorted(ranks.values())  # more important, more rank
    assert ranks["model.layers.0.self_attn.v_proj"] == 4 and ranks[order[0]] == 0
    assert ranks == {p: sum(k) for p, k in lorakit.get_config(model).rank_pattern.items()}


def test_hook_state_round_trips() -> None:
    model = adalora_model(init_lora_weights=True)
    hook = AdaLoraHook(model, lorakit.get_config(model))
    train_steps(model, token_ids(), steps=6, hooks=[hook])
    other = AdaLoraHook(adalora_model(init_lora_weights=True), AdaLoraConfig(init_r=4, target_r=2, total_step=12,
                                                                             target_modules=["q_proj", "v_proj"]))
    other.load_state_dict(hook.state_dict())
    assert other.config.rank_pattern == hook.config.rank_pattern and other.budget == hook.budget
    for key, value in hook.importance.sensitivity.items():
        torch.testing.assert_close(other.importance.sensitivity[key], value)


def test_rank_plot_is_a_png(tmp_path) -> None:
    out = tmp_path / "ranks.png"
    plot_ranks({"model.layers.0.q_proj": 3, "model.layers.0.v_proj": 1}, str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24])[0] > 100


def test_config_from_a_yaml_section_and_total_steps_from_the_trainer() -> None:
    from lorakit.variants import adapter_config_from_dict

    config = adapter_config_from_dict({"peft_type": "ADALORA", "init_r": "6", "target_r": 3,
                                       "target_modules": ["q_proj"]})
    assert isinstance(config, AdaLoraConfig) and config.init_r == 6 and config.total_step is None
    assert type(adapter_config_from_dict({"r": 4})) is lorakit.LoraConfig
    model = tiny_llama()
    lorakit.add_adapter(model, config)
    (hook,) = hooks_for(model, None, total_steps=20)
    assert config.total_step == 20 and hook.target_budget == 3 * 2


# -- user mistakes --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(target_r=16, init_r=8), "exceeds init_r"),
    (dict(total_step=10, tinit=5, tfinal=5), "no budget phase"),
    (dict(beta1=1.5), "beta1"),
    (dict(use_dora=True), "use_dora"),
])
def test_bad_configs_are_refused(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        AdaLoraConfig(**kwargs)


def test_unsupported_layers_and_mixing_with_lora_are_refused() -> None:
    with pytest.raises(TargetError, match="Embedding"):
        lorakit.add_adapter(tiny_llama(), AdaLoraConfig(total_step=5, target_modules=["embed_tokens"]))
    model = adalora_model()
    with pytest.raises(lorakit.AdapterError, match="AdaLoRA"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"]), "plain")
    with pytest.raises(ConfigError, match="total_step"):
        AdaLoraHook(model, AdaLoraConfig(target_modules=["q_proj"]))
