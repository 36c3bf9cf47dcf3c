"""save_adapter / load_adapter within lorakit: round trips, what the files hold, atomic saves."""

from __future__ import annotations

import copy
import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.io import atomic
from tests.helpers import tiny_bert_seq_cls, tiny_gpt2, tiny_llama
from tests.io.metadata_support import read_records
from tests.io.support import forward, perturb_trainable


def _adapted(base: torch.nn.Module, name: str = "default", **settings) -> torch.nn.Module:
    model = copy.deepcopy(base)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **settings}
    lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=False, **settings), name)
    perturb_trainable(model)
    return model


@pytest.mark.parametrize(
    ("build", "settings"),
    [
        (tiny_llama, dict(rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 3.0}, use_rslora=True)),
        (tiny_llama, dict(target_modules=["embed_tokens", "gate_proj"], lora_dropout=0.1)),
        (tiny_gpt2, dict(target_modules=["c_attn", "c_proj"], lora_bias=True)),
        (tiny_bert_seq_cls, dict(target_modules=["query"], bias="all", modules_to_save=["classifier"])),
        (lambda: tiny_llama().to(torch.bfloat16), dict(target_modules=["q_proj", "down_proj"])),  # fp32 adapter
    ],
    ids=["patterns", "embedding", "conv1d_lora_bias", "bias_all_head", "bf16_base"],
)
def test_round_trip_gives_same_tensors_outputs_and_config(tmp_path, ids, build, settings) -> None:
    base = build()
    model = _adapted(base, **settings)
    lorakit.save_adapter(model, tmp_path)
    loaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    saved, again = lorakit.adapter_state_dict(model), lorakit.adapter_state_dict(loaded)
    assert saved.keys() == again.keys()
    for key, tensor in saved.items():
        torch.testing.assert_close(again[key], tensor, rtol=0, atol=0, msg=key)  # bit for bit
    torch.testing.assert_close(forward(loaded.eval(), ids), forward(model.eval(), ids))
    original, read = lorakit.get_config(model).to_dict(), lorakit.get_config(loaded).to_dict()
    assert {k: v for k, v in read.items() if k != "inference_mode"} == {
        k: v for k, v in original.items() if k != "inference_mode"}


def test_config_file_holds_peft_fields_checksum_and_fingerprint(tmp_path) -> None:
    base = tiny_llama()
    model = _adapted(base, rank_pattern={"v_proj": 2})
    directory = lorakit.save_adapter(model, tmp_path)
    assert directory == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["rank_pattern"] == {"v_proj": 2}
    assert not [k for k in config if k.startswith("lorakit")]  # PEFT warns about keys it does not know
    records = read_records(tmp_path)  # lorakit's records: in the weights' metadata
    config_bytes = (tmp_path / "adapter_config.json").read_bytes()
    assert records["lorakit_config_sha256"] == hashlib.sha256(config_bytes).hexdigest()
    fingerprint = records["lorakit_fingerprint"]
    # hidden 32; v_proj: 2 key/value heads of size 8
    shapes = {f"model.layers.{i}.self_attn.{p}": shape for i in range(2) for p, shape in (("q_proj", [32, 32]),
                                                                                           ("v_proj", [16, 32]))}
    assert fingerprint["layer_shapes"] == shapes
    assert fingerprint["layers_sha256"] == hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()
    assert (fingerprint["architecture"], fingerprint["model_type"], fingerprint["vocab_size"]) == (
        "LlamaForCausalLM", "llama", 128)


def test_default_target_modules_are_written_resolved(tmp_path) -> None:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(r=2))
    lorakit.save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["q_proj", "v_proj"]


def test_load_frozen_by_default_trainable_on_request(tmp_path) -> None:
    base = tiny_llama()
    lorakit.save_adapter(_adapted(base), tmp_path)
    frozen = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = lorakit.load_adapter(copy.deepcopy(base), tmp_path, trainable=True)
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert names and all(".lora_A.default." in n or ".lora_B.default." in n for n in names)


def test_second_adapter_loads_next_to_the_first(tmp_path, ids) -> None:
    base = tiny_llama()
    first, second = _adapted(base), _adapted(base, "b", target_modules=["q_proj", "o_proj"])
    lorakit.save_adapter(first, tmp_path)
    lorakit.save_adapter(second, tmp_path, "b")
    model = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    lorakit.load_adapter(model, tmp_path, "b", activate=False)
    assert lorakit.active_adapters(model) == ["default"]
    torch.testing.assert_close(forward(model, ids), forward(first, ids))
    lorakit.set_adapter(model, "b")
    torch.testing.assert_close(forward(model, ids), forward(second, ids))


def test_save_load_through_torch_compile_wrapper(tmp_path, ids) -> None:
    """torch.compile wraps the model (keys gain "_orig_mod."); save and load see through it without compiling."""
    base = tiny_llama()
    model = _adapted(base)
    lorakit.save_adapter(torch.compile(model), tmp_path)
    loaded = copy.deepcopy(base)
    lorakit.load_adapter(torch.compile(loaded), tmp_path)
    assert lorakit.list_adapters(loaded) == ["default"]
    torch.testing.assert_close(forward(loaded, ids), forward(model, ids))
    assert set(lorakit.adapter_state_dict(torch.compile(model))) == set(lorakit.adapter_state_dict(model))


def test_trusted_pickle_loads_with_allow_pickle(tmp_path, ids) -> None:
    base = tiny_llama()
    model = _adapted(base)
    lorakit.save_adapter(model, tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    torch.save(lorakit.adapter_state_dict(model), tmp_path / "adapter_model.bin")
    loaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path, allow_pickle=True)
    torch.testing.assert_close(forward(loaded, ids), forward(model, ids))


# -- atomic saves ----------------------------------------------------------------------------------------------------
def _crash_on(monkeypatch, file_name: str) -> None:
    """Make the rename that would put `file_name` into place fail, as a crash between the two files would."""
    real = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == file_name and ".lorakit-backup" not in os.path.basename(src):
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)


@pytest.mark.parametrize("crash_at", ["adapter_model.safetensors", "adapter_config.json"])
def test_crash_mid_save_keeps_the_previous_adapter(tmp_path, ids, monkeypatch, crash_at) -> None:
    base = tiny_llama()
    good, newer = _adapted(base), _adapted(base, target_modules=["k_proj"], r=2)
    lorakit.save_adapter(good, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _crash_on(monkeypatch, crash_at)
    with pytest.raises(OSError, match="simulated crash"):
        lorakit.save_adapter(newer, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files, old bytes
    loaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(forward(loaded, ids), forward(good, ids))


def test_crash_during_first_save_leaves_no_adapter_files(tmp_path, monkeypatch) -> None:
    _crash_on(monkeypatch, "adapter_config.json")
    with pytest.raises(OSError, match="simulated crash"):
        lorakit.save_adapter(_adapted(tiny_llama()), tmp_path / "new")
    assert list((tmp_path / "new").iterdir()) == []


def test_killed_between_renames_loads_the_previous_weights(tmp_path, ids) -> None:
    """A hard kill after the weights were renamed but before the config was: new weights, old config, and the
    backup of the old weights. The config checksum in the weights' metadata tells them apart; the loader takes the
    backup, with a warning. (With byte-identical configs the new weights and the old config are a whole adapter.)"""
    base = tiny_llama()
    good, newer = _adapted(base), _adapted(base, lora_alpha=16)
    lorakit.save_adapter(good, tmp_path / "old")
    lorakit.save_adapter(newer, tmp_path / "new")
    weights = tmp_path / "old" / "adapter_model.safetensors"
    os.link(weights, atomic.backup_path(weights))
    os.replace(tmp_path / "new" / "adapter_model.safetensors", weights)  # as save_adapter renames it in
    with pytest.warns(UserWarning, match="interrupted save"):
        loaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "old")
    torch.testing.assert_close(forward(loaded, ids), forward(good, ids))
    assert not torch.allclose(forward(newer, ids), forward(good, ids))


def test_save_over_an_existing_adapter_replaces_it(tmp_path, ids) -> None:
    base = tiny_llama()
    lorakit.save_adapter(_adapted(base), tmp_path)
    newer = _adapted(base, target_modules=["k_proj"], r=2)
    lorakit.save_adapter(newer, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert all("k_proj" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    torch.testing.assert_close(forward(lorakit.load_adapter(copy.deepcopy(base), tmp_path), ids), forward(newer, ids))
