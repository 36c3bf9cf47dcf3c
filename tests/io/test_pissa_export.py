"""PiSSA / OLoRA adapters are saved as plain LoRA of rank 2r that is exact on the ORIGINAL base weights.

Training moves the base to the residual W - s·B0·A0, so the trained model is W + s·(B·A - B0·A0). Every loader
that applies W + s'·B'·A' to the weights it has (PEFT with init_lora_weights=True, lorakit.load_adapter, the
server's adapter cache) must give the trained model from the file alone."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lorakit
from lorakit import AdapterFileError
from lorakit.io.checkpoint import read_adapter
from tests.helpers import logits, tiny_llama, token_ids
from tests.variants.loop import train_steps

INITS = ["pissa", "olora", "pissa_niter_2"]


def trained(init: str, **settings) -> torch.nn.Module:
    """A tiny Llama with a PiSSA / OLoRA adapter trained for a few steps (eval mode)."""
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], **settings}
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=init, **settings))
    train_steps(model, token_ids(seq=12), steps=4, lr=2e-2)
    return model.eval()


def greedy(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("init", INITS)
def test_saved_file_is_plain_lora_exact_on_the_original_base(tmp_path, init) -> None:
    peft = pytest.importorskip("peft")
    model = trained(init)
    ids = token_ids(seq=9, seed=3)
    want = logits(model, ids)
    assert not torch.allclose(want, logits(tiny_llama(), ids), atol=1e-3), "training must change the model"
    lorakit.save_adapter(model, tmp_path)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["init_lora_weights"], saved["r"], saved["lora_alpha"]) == (True, 8, 16)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()  # plain LoRA on the original W
    ours = lorakit.load_adapter(tiny_llama(), tmp_path)
    torch.testing.assert_close(logits(theirs, ids), want)
    torch.testing.assert_close(logits(ours, ids), want)
    prompt = token_ids(batch=1, seq=5, seed=4)
    assert torch.equal(greedy(ours, prompt), greedy(model, prompt))
    assert torch.equal(greedy(theirs, prompt), greedy(model, prompt))


@pytest.mark.parametrize("settings", [
    {"use_rslora": True},  # scaling alpha / sqrt(r): doubling r alone would change it
    {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3.0}},
    {"lora_bias": True},
    {"use_dora": True},  # DoRA's direction (W + s·B·A) / ||W + s·B·A|| is the same matrix after the fold
])
def test_scaling_patterns_and_bias_survive_the_fold(tmp_path, settings) -> None:
    model = trained("pissa", **settings)
    ids = token_ids(seq=9, seed=3)
    lorakit.save_adapter(model, tmp_path)
    torch.testing.assert_close(logits(lorakit.load_adapter(tiny_llama(), tmp_path), ids), logits(model, ids))
    config, _, tensors, _ = read_adapter(tmp_path)
    for path in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"):
        layer = model.get_submodule(path)
        assert config.rank_for(path) == 2 * layer.r["default"]
        assert tensors[f"base_model.model.{path}.lora_A.weight"].shape[0] == 2 * layer.r["default"]


def test_merging_the_in_memory_model_gives_the_same_model(tmp_path) -> None:
    model = trained("pissa")
    ids = token_ids(seq=9, seed=3)
    lorakit.save_adapter(model, tmp_path)
    merged_file = lorakit.merge_and_unload(lorakit.load_adapter(tiny_llama(), tmp_path))
    merged_memory = lorakit.merge_and_unload(copy.deepcopy(model))
    torch.testing.assert_close(logits(merged_memory, ids), logits(model, ids))
    torch.testing.assert_close(logits(merged_file, ids), logits(model, ids))


def test_the_server_cache_serves_the_trained_model(tmp_path) -> None:
    from lorakit.mixed import use_plan
    from lorakit.serve.cache import AdapterCache

    model = trained("olora")
    ids = token_ids(seq=9, seed=3)
    lorakit.save_adapter(model, tmp_path / "adapters" / "tuned")
    cache = AdapterCache(tiny_llama(), tmp_path / "adapters", max_resident=2)  # the original base, W + s·B·A
    cache.ensure(["tuned"])
    with torch.no_grad(), use_plan(cache.layers(), cache.plan([[("tuned", 1.0)]] * ids.shape[0])):
        served = cache.model(ids).logits
    torch.testing.assert_close(served, logits(model, ids))


def test_initial_factors_stay_out_of_the_file_and_the_optimizer(tmp_path) -> None:
    from lorakit.layers.base import initial_factors

    model = trained("pissa")
    layer = model.model.layers[0].self_attn.q_proj
    a0, b0 = initial_factors(layer, "default")
    assert a0.shape == layer.lora_A["default"].weight.shape and b0.shape == layer.lora_B["default"].weight.shape
    assert not any(p is a0 or p is b0 for p in model.parameters())
    assert all(t.data_ptr() not in (a0.data_ptr(), b0.data_ptr()) for t in model.state_dict().values())
    lorakit.save_adapter(model, tmp_path)
    _, _, tensors, _ = read_adapter(tmp_path)
    assert sorted({k.rsplit(".", 2)[-2] for k in tensors}) == ["lora_A", "lora_B"]


def test_raw_form_only_on_request_and_it_says_so(tmp_path) -> None:
    model = trained("pissa")
    ids = token_ids(seq=9, seed=3)
    lorakit.save_adapter(model, tmp_path, pissa_raw=True)
    config, extra, _, _ = read_adapter(tmp_path)
    assert (config.init_lora_weights, config.r) == ("pissa", 4)
    assert extra["lorakit_residual_init"] == {"init_lora_weights": "pissa", "form": "raw", "trained_r": 4}
    # loading the raw file decomposes the base again (deterministic SVD): the trained model
    torch.testing.assert_close(logits(lorakit.load_adapter(tiny_llama(), tmp_path), ids), logits(model, ids))


def test_a_loaded_raw_file_saves_as_the_plain_form(tmp_path) -> None:
    model = trained("olora")
    ids = token_ids(seq=9, seed=3)
    lorakit.save_adapter(model, tmp_path / "raw", pissa_raw=True)
    again = lorakit.load_adapter(tiny_llama(), tmp_path / "raw")  # re-decomposed at load: A0, B0 recorded again
    lorakit.save_adapter(again, tmp_path / "plain")
    assert read_adapter(tmp_path / "plain")[0].init_lora_weights is True
    torch.testing.assert_close(logits(lorakit.load_adapter(tiny_llama(), tmp_path / "plain"), ids),
                               logits(model, ids))


def test_the_server_cache_refuses_a_raw_file(tmp_path) -> None:
    from lorakit.serve.cache import AdapterCache

    lorakit.save_adapter(trained("pissa"), tmp_path / "adapters" / "raw", pissa_raw=True)
    cache = AdapterCache(tiny_llama(), tmp_path / "adapters", max_resident=2)
    with pytest.raises(AdapterFileError, match=r"raw pissa adapter.*save it again"):
        cache.read("raw")
