"""The adapter cache: rows served from its slots equal each adapter run alone; LRU; ranks side by side; fast swaps;
names and files that must be refused."""

from __future__ import annotations

import copy
import time

import pytest
import torch

import lorakit
from lorakit.errors import AdapterError, AdapterFileError
from lorakit.mixed import use_plan
from lorakit.serve.cache import AdapterCache

ROWS = ["alpha", None, "delta", "gamma", "beta", "alpha"]


def ids_for(served, rows: int, seq: int = 7) -> torch.Tensor:
    return torch.randint(3, len(served.tokenizer), (rows, seq), generator=torch.Generator().manual_seed(3))


def served_logits(cache: AdapterCache, rows, ids: torch.Tensor) -> torch.Tensor:
    names = [n for row in rows for n, _ in row]
    cache.ensure(names)
    with torch.no_grad(), use_plan(cache.layers(), cache.plan(rows)):
        return cache.model(ids).logits


def as_entries(rows):
    return [[] if r is None else [(r, 1.0)] for r in rows]


def test_rows_equal_each_adapter_loaded_by_the_library(served):
    cache = AdapterCache(copy.deepcopy(served.model), served.adapter_dir, max_resident=4)
    ids = ids_for(served, len(ROWS))
    out = served_logits(cache, as_entries(ROWS), ids)
    for i, name in enumerate(ROWS):
        with torch.no_grad():
            alone = served.reference(name)(ids[i:i + 1]).logits
        torch.testing.assert_close(out[i:i + 1], alone)


def test_composed_rows_equal_the_library_mixed_forward(served):
    cache = AdapterCache(copy.deepcopy(served.model), served.adapter_dir, max_resident=4)
    rows = [[("alpha", 0.5), ("gamma", 2.0)], [("delta", -1.0)], []]
    ids = ids_for(served, len(rows))
    out = served_logits(cache, rows, ids)
    reference = served.reference("alpha")
    for name in ("gamma", "delta"):
        lorakit.load_adapter(reference, served.adapter_dir / name, adapter_name=name)
    with torch.no_grad(), lorakit.mixed_adapters(reference, rows):
        torch.testing.assert_close(out, reference(ids).logits)


def test_lru_eviction_and_slot_reuse_stay_exact(served):
    cache = AdapterCache(copy.deepcopy(served.model), served.adapter_dir, max_resident=2)
    cache.ensure(["delta"])  # rank 16, then evicted: its slot is reused by smaller ranks
    cache.ensure(["alpha"])
    cache.ensure(["delta"])  # touch: alpha becomes least recently used
    cache.ensure(["beta"])
    assert list(cache.resident) == ["delta", "beta"]
    cache.ensure(["gamma"], pinned=["beta"])  # delta is the LRU but beta is pinned anyway
    assert list(cache.resident) == ["beta", "gamma"]
    with pytest.raises(AdapterError, match="in use by the running batch"):
        cache.ensure(["alpha"], pinned=["beta", "gamma"])
    assert cache.unload("beta") and not cache.unload("beta")
    rows = ["gamma", "alpha", None]
    ids = ids_for(served, len(rows))
    out = served_logits(cache, as_entries(rows), ids)
    for i, name in enumerate(rows):
        with torch.no_grad():
            torch.testing.assert_close(out[i:i + 1], served.reference(name)(ids[i:i + 1]).logits)


def test_swapping_an_adapter_in_is_far_cheaper_than_a_forward(served):
    cache = AdapterCache(copy.deepcopy(served.model), served.adapter_dir, max_resident=2)
    prepared = cache.read("delta")
    cache.install(prepared)  # first install wraps the layers and allocates the banks
    ids = ids_for(served, 4, 32)
    swaps, forwards = [], []
    for _ in range(5):
        start = time.perf_counter()
        cache.install(prepared)
        swaps.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            cache.model(ids)
        forwards.append(time.perf_counter() - start)
    assert min(swaps) < min(forwards) / 3, (min(swaps), min(forwards))


def test_refuses_names_and_links_outside_the_directory(served, tmp_path):
    (tmp_path / "evil").symlink_to(served.adapter_dir / "alpha", target_is_directory=True)
    cache = AdapterCache(copy.deepcopy(served.model), tmp_path)
    assert cache.available() == []
    with pytest.raises(AdapterError, match="outside the adapter directory"):
        cache.read("evil")
    for name in ("../adapters/alpha", "..", "a/b", "", "base", None):
        with pytest.raises(AdapterError, match="expected 1-64 letters"):
            cache.read(name)
    with pytest.raises(AdapterError, match="no adapter named 'alpha'"):
        cache.read("alpha")


def test_refuses_adapters_that_cannot_be_mixed_or_do_not_fit(served, tmp_path):
    model = copy.deepcopy(served.model)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]),
                        "head")
    lorakit.save_adapter(model, tmp_path, "head")
    from transformers import LlamaForCausalLM

    other_config = copy.deepcopy(served.model.config)
    other_config.intermediate_size = 48  # another base: its MLP is narrower
    other = LlamaForCausalLM(other_config)
    lorakit.add_adapter(other, lorakit.LoraConfig(r=2, target_modules=["gate_proj"]), "narrow")
    lorakit.save_adapter(other, tmp_path, "narrow")
    cache = AdapterCache(copy.deepcopy(served.model), tmp_path)
    with pytest.raises(AdapterFileError, match="modules_to_save"):
        cache.read("head")
    with pytest.raises(AdapterFileError, match="does not fit this base model"):
        cache.read("narrow")
    assert cache.resident == {}


def test_peft_adapters_plain_and_dora_match_peft(served, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    for name, dora in (("plain", False), ("dora", True)):
        torch.manual_seed(5)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "gate_proj", "o_proj"], use_dora=dora,
                            init_lora_weights=False)
        get_peft_model(copy.deepcopy(served.model), config).save_pretrained(tmp_path / name)
    cache = AdapterCache(copy.deepcopy(served.model), tmp_path)
    rows = ["dora", "plain", None]
    ids = ids_for(served, len(rows))
    out = served_logits(cache, as_entries(rows), ids)
    for i, name in enumerate(rows[:2]):
        peft_model = PeftModel.from_pretrained(copy.deepcopy(served.model), tmp_path / name).eval()
        with torch.no_grad():
            torch.testing.assert_close(out[i:i + 1], peft_model(ids[i:i + 1]).logits)


def test_an_adalora_adapter_is_served_like_the_library_loads_it(served, tmp_path):
    """SVD triplets become A = Λ ⊙ Q, B = P with AdaLoRA's scale; a layer pruned to rank 0 adds nothing."""
    from lorakit.inject import lora_layers
    from lorakit.variants import AdaLoraConfig

    model = copy.deepcopy(served.model)
    config = AdaLoraConfig(init_r=4, target_r=2, lora_alpha=6, target_modules=["q_proj", "v_proj"],
                           init_lora_weights=False, total_step=10)
    lorakit.add_adapter(model, config, "ada")
    masks = [[True, False, True, True], [False] * 4, [True, True, False, False], [True] * 4]
    with torch.no_grad():
        for (path, layer), keep in zip(lora_layers(model), masks, strict=True):
            layer.lora_E["ada"].mul_(3.0)  # an update large enough to matter
            layer.apply_mask("ada", torch.tensor(keep))
            config.rank_pattern[path] = keep
    lorakit.save_adapter(model, tmp_path, "ada")
    cache = AdapterCache(copy.deepcopy(served.model), tmp_path, max_resident=2)
    ids = ids_for(served, 2)
    out = served_logits(cache, [[("ada", 1.0)], []], ids)
    reference = lorakit.load_adapter(copy.deepcopy(served.model), tmp_path / "ada", adapter_name="ada")
    with torch.no_grad():
        torch.testing.assert_close(out[:1], reference(ids[:1]).logits)
        torch.testing.assert_close(out[1:], served.model(ids[1:]).logits)
        assert (out[:1] - served.model(ids[:1]).logits).abs().max() > 1e-3
