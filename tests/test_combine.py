"""Weighted combination of adapters: exact methods against dense sums, ties / dare against hand computations."""

import pytest
import torch

import lorakit
from lorakit.combine import combine_ties, dare, ties_merge, trim
from lorakit.errors import AdapterError, ConfigError
from lorakit.inject import lora_layers
from tests.helpers import TinyConvNet, conv_input, logits, tiny_llama, token_ids


def two_adapter_llama(r_b: int = 2, b_targets=("q_proj", "o_proj")):
    model = tiny_llama()
    cfg_a = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    cfg_b = lorakit.LoraConfig(r=r_b, lora_alpha=3, target_modules=list(b_targets), init_lora_weights=False)
    lorakit.add_adapter(model, cfg_a, "a")
    lorakit.add_adapter(model, cfg_b, "b")
    return model


def weighted_sum(layer, weights: dict[str, float]) -> torch.Tensor:
    return sum(w * layer.delta_weight(n) for n, w in weights.items() if n in layer.r)


@pytest.mark.parametrize("weight", [1.0, -0.5])
def test_linear_with_one_adapter_reproduces_it(weight: float) -> None:
    model = two_adapter_llama()
    lorakit.combine_adapters(model, ["a"], [weight], "c", method="linear")
    for _, layer in lora_layers(model):
        if "a" in layer.r:
            torch.testing.assert_close(layer.delta_weight("c"), weight * layer.delta_weight("a"))
    if weight == 1.0:
        ids = token_ids()
        lorakit.set_adapter(model, "a")
        expected = logits(model, ids)
        lorakit.set_adapter(model, "c")
        torch.testing.assert_close(logits(model, ids), expected)


def test_cat_is_the_exact_weighted_sum() -> None:
    model = two_adapter_llama()
    lorakit.combine_adapters(model, ["a", "b"], [0.7, -0.3], "c", method="cat")
    for path, layer in lora_layers(model):
        torch.testing.assert_close(layer.delta_weight("c"), weighted_sum(layer, {"a": 0.7, "b": -0.3}))
        assert layer.r["c"] == sum(layer.r[n] for n in ("a", "b") if n in layer.r), path


def test_cat_output_equals_both_adapters_active_with_weights_one() -> None:
    model = two_adapter_llama()
    ids = token_ids()
    lorakit.set_adapter(model, ["a", "b"])
    both = logits(model, ids)
    lorakit.combine_adapters(model, ["a", "b"], [1.0, 1.0], "c", method="cat")
    lorakit.set_adapter(model, "c")
    torch.testing.assert_close(logits(model, ids), both)


def test_svd_at_full_rank_is_exact() -> None:
    model = two_adapter_llama()
    lorakit.combine_adapters(model, ["a", "b"], [0.6, 0.4], "c", method="svd", rank=6)
    for _, layer in lora_layers(model):
        torch.testing.assert_close(layer.delta_weight("c"), weighted_sum(layer, {"a": 0.6, "b": 0.4}))


def test_svd_truncated_is_the_best_rank_k_approximation() -> None:
    model = two_adapter_llama()
    lorakit.combine_adapters(model, ["a", "b"], [0.6, 0.4], "c", method="svd", rank=3)
    layer = model.model.layers[0].self_attn.q_proj  # both adapters: rank 6 sum
    dense = weighted_sum(layer, {"a": 0.6, "b": 0.4})
    u, s, vh = torch.linalg.svd(dense)
    best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    assert layer.r["c"] == 3
    torch.testing.assert_close(layer.delta_weight("c"), best)
    assert torch.linalg.matrix_norm(dense - best) < torch.linalg.matrix_norm(dense)


def test_svd_default_rank_is_the_largest_input_rank() -> None:
    model = two_adapter_llama()
    lorakit.combine_adapters(model, ["a", "b"], [1.0, 1.0], "c", method="svd")
    assert model.model.layers[0].self_attn.q_proj.r["c"] == 4
    assert model.model.layers[0].self_attn.o_proj.r["c"] == 2


def test_linear_rejects_mixed_ranks() -> None:
    model = two_adapter_llama(r_b=2, b_targets=("q_proj",))
    with pytest.raises(ConfigError, match=r"one rank, got ranks \[2, 4\].*'cat' or 'svd'"):
        lorakit.combine_adapters(model, ["a", "b"], [0.5, 0.5], "c", method="linear")
    assert lorakit.list_adapters(model) == ["a", "b"]


def test_bad_arguments_are_clear_errors() -> None:
    model = two_adapter_llama()
    with pytest.raises(ConfigError, match="method='nope'"):
        lorakit.combine_adapters(model, ["a"], [1.0], "c", method="nope")
    with pytest.raises(ConfigError, match="one weight per adapter"):
        lorakit.combine_adapters(model, ["a", "b"], [1.0], "c")
    with pytest.raises(AdapterError, match="'a' already exists"):
        lorakit.combine_adapters(model, ["b"], [1.0], "a")
    with pytest.raises(AdapterError, match="'zz'"):
        lorakit.combine_adapters(model, ["zz"], [1.0], "c")


def test_combined_adapter_saves_and_loads(tmp_path) -> None:
    model = two_adapter_llama()
    lorakit.combine_adapters(model, ["a", "b"], [0.7, 0.3], "c", method="cat")
    lorakit.set_adapter(model, "c")
    ids = token_ids()
    expected = logits(model, ids)
    lorakit.save_adapter(model, tmp_path, adapter_name="c")
    fresh = tiny_llama()
    lorakit.load_adapter(fresh, tmp_path, adapter_name="c")
    ranks = {p: layer.r["c"] for p, layer in lora_layers(fresh)}
    assert ranks == {p: layer.r["c"] for p, layer in lora_layers(model)}
    torch.testing.assert_close(logits(fresh, ids), expected)


def test_cat_on_conv_layers_is_exact() -> None:
    model = TinyConvNet().eval()
    for name, r in (("a", 2), ("b", 4)):
        cfg = lorakit.LoraConfig(r=r, target_modules=["conv", "conv3d"], init_lora_weights=False)
        lorakit.add_adapter(model, cfg, name)
    lorakit.combine_adapters(model, ["a", "b"], [0.5, 2.0], "c", method="cat")
    for _, layer in lora_layers(model):
        torch.testing.assert_close(layer.delta_weight("c"), weighted_sum(layer, {"a": 0.5, "b": 2.0}))
    lorakit.set_adapter(model, "c")
    assert model(conv_input()).shape == (2, 5)


def test_svd_on_embedding_layers_is_exact_at_full_rank() -> None:
    model = tiny_llama()
    for name, r in (("a", 2), ("b", 3)):
        cfg = lorakit.LoraConfig(r=r, lora_alpha=4, target_modules=["embed_tokens"], init_lora_weights=False)
        lorakit.add_adapter(model, cfg, name)
    lorakit.combine_adapters(model, ["a", "b"], [1.0, 0.5], "c", method="svd", rank=5)
    layer = model.model.embed_tokens
    expected = weighted_sum(layer, {"a": 1.0, "b": 0.5})
    # embedding factors are N(0, 1), so entries reach ~10 and an fp32 SVD reconstructs to ~eps * ||delta||_2 ~ 1e-5
    tol = 1e-6 * torch.linalg.matrix_norm(expected, ord=2).item()
    torch.testing.assert_close(layer.delta_weight("c"), expected, atol=tol, rtol=1.3e-6)


def test_grouped_conv_adapters_are_refused() -> None:
    model = TinyConvNet()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["grouped"]), "a")
    with pytest.raises(AdapterError, match="grouped"):
        lorakit.combine_adapters(model, ["a"], [1.0], "c", method="cat")


# -- ties / dare on hand-made tensors -----------------------------------------------------------------------
def test_trim_keeps_the_largest_magnitudes() -> None:
    t = torch.tensor([[0.1, -0.5], [0.3, -0.05]])
    torch.testing.assert_close(trim(t, 0.5), torch.tensor([[0.0, -0.5], [0.3, 0.0]]))
    torch.testing.assert_close(trim(t, 0.25), torch.tensor([[0.0, -0.5], [0.0, 0.0]]))
    torch.testing.assert_close(trim(t, 1.0), t)


def test_ties_elects_sign_by_mass_and_averages_agreeing_entries() -> None:
    t1 = torch.tensor([1.0, -2.0, 0.0, 3.0])
    t2 = torch.tensor([2.0, 1.0, -1.0, -4.0])
    # sums [3, -1, -1, -1] elect signs [+, -, -, -]; entries that agree (and are non-zero) are averaged
    torch.testing.assert_close(ties_merge([t1, t2]), torch.tensor([1.5, -2.0, -1.0, -4.0]))


def test_combine_ties_trims_each_factor_then_merges() -> None:
    a1, b1 = torch.tensor([[4.0, 0.1, -1.0]]), torch.tensor([[1.0], [-3.0]])
    a2, b2 = torch.tensor([[-0.2, 2.0, 1.0]]), torch.tensor([[1.0], [2.0]])
    # coefficients 4 and 1: factors are scaled by sqrt(4) = 2 and 1, then each keeps its top 2 of 3 (A) / 1 of 2 (B)
    a, b = combine_ties([(a1, b1), (a2, b2)], [4.0, 1.0], density=0.6)
    # A parts: [8, 0, -2] and [0, 2, 1] -> signs of sums [+, +, -] -> [8, 2, -2]
    torch.testing.assert_close(a, torch.tensor([[8.0, 2.0, -2.0]]))
    # B parts (density 0.6 of 2 entries keeps 1): [0, -6] and [0, 2] -> sum -4 elects "-" -> [0, -6]
    torch.testing.assert_close(b, torch.tensor([[0.0], [-6.0]]))


def test_dare_keeps_about_density_and_rescales() -> None:
    t = torch.ones(20000)
    out = dare(t, 0.3, torch.Generator().manual_seed(0))
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.01)  # 20,000 Bernoulli(0.3): sd 0.003
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 1 / 0.3))
    assert out.mean().item() == pytest.approx(1.0, abs=0.04)  # unbiased in expectation


def test_dare_is_reproducible_with_a_seed() -> None:
    t = torch.randn(50)
    first = dare(t, 0.5, torch.Generator().manual_seed(7))
    torch.testing.assert_close(dare(t, 0.5, torch.Generator().manual_seed(7)), first)
    assert not torch.equal(dare(t, 0.5, torch.Generator().manual_seed(8)), first)


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties"])
def test_sparse_methods_on_a_model_are_seeded(method: str) -> None:
    model = two_adapter_llama(r_b=4)
    lorakit.combine_adapters(model, ["a", "b"], [0.5, 0.5], "c", method=method, density=0.5, seed=3)
    lorakit.combine_adapters(model, ["a", "b"], [0.5, 0.5], "d", method=method, density=0.5, seed=3)
    for _, layer in lora_layers(model):
        torch.testing.assert_close(layer.delta_weight("c"), layer.delta_weight("d"))


def test_dare_linear_at_density_one_equals_linear() -> None:
    model = two_adapter_llama(r_b=4)
    lorakit.combine_adapters(model, ["a", "b"], [0.5, 0.5], "lin", method="linear")
    lorakit.combine_adapters(model, ["a", "b"], [0.5, 0.5], "dare", method="dare_linear", density=1.0)
    for _, layer in lora_layers(model):
        torch.testing.assert_close(layer.delta_weight("dare"), layer.delta_weight("lin"))
