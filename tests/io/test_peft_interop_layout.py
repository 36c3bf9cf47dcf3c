"""PEFT interop of directory layouts and of initialisations that rewrite the base: adapter names, several adapters
from one model, PiSSA, and PEFT's pickle files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import lorakit
from tests.helpers import tiny_llama
from tests.io.support import forward, peft_model, perturb_trainable

# three adapters on one model: (name, config); "default" lands in the root, the others in sub-folders
ADAPTERS = [
    ("default", dict(r=4, target_modules=["q_proj"])),
    ("other", dict(r=2, target_modules=["v_proj", "o_proj"], lora_alpha=3)),
    ("q", dict(r=3, target_modules=["q_proj", "up_proj"], use_rslora=True)),  # a name that is part of module names
]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "README.md"}


def _lorakit_with_adapters(base: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(base)
    for name, settings in ADAPTERS:
        lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=False, **settings), name)
    perturb_trainable(model)
    return model


def _outputs_per_adapter(model, ids, activate) -> dict[str, torch.Tensor]:
    out = {}
    for name, _ in ADAPTERS:
        activate(model, name)
        out[name] = forward(model, ids)
    return out


def test_several_adapters_same_layout_as_peft(peft, tmp_path, ids) -> None:
    base = tiny_llama()
    reference = peft_model(base, **ADAPTERS[0][1])
    for name, settings in ADAPTERS[1:]:
        reference.add_adapter(name, peft.LoraConfig(init_lora_weights=False, **settings))
    reference.save_pretrained(tmp_path / "peft")
    model = _lorakit_with_adapters(base)
    for name, _ in ADAPTERS:
        lorakit.save_adapter(model, tmp_path / "lorakit", name)
    assert _files(tmp_path / "lorakit") == _files(tmp_path / "peft") == {
        "adapter_config.json", "adapter_model.safetensors", "other/adapter_config.json",
        "other/adapter_model.safetensors", "q/adapter_config.json", "q/adapter_model.safetensors",
    }


def test_several_lorakit_adapters_load_in_peft(peft, tmp_path, ids) -> None:
    base = tiny_llama()
    model = _lorakit_with_adapters(base)
    for name, _ in ADAPTERS:
        lorakit.save_adapter(model, tmp_path, name)
    expected = _outputs_per_adapter(model, ids, lorakit.set_adapter)
    reference = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    for name, _ in ADAPTERS[1:]:
        reference.load_adapter(tmp_path / name, adapter_name=name)
    got = _outputs_per_adapter(reference, ids, lambda m, n: m.set_adapter(n))
    for name, _ in ADAPTERS:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    assert not torch.allclose(expected["other"], expected["q"])


def test_several_peft_adapters_load_in_lorakit_by_name(peft, tmp_path, ids) -> None:
    base = tiny_llama()
    reference = peft_model(base, **ADAPTERS[0][1])
    for name, settings in ADAPTERS[1:]:
        reference.add_adapter(name, peft.LoraConfig(init_lora_weights=False, **settings))
    perturb_trainable(reference)
    reference.save_pretrained(tmp_path)
    expected = _outputs_per_adapter(reference, ids, lambda m, n: m.set_adapter(n))
    model = copy.deepcopy(base)
    for name, _ in ADAPTERS:  # path/<name> is found from the name, like save_adapter writes it
        lorakit.load_adapter(model, tmp_path, name)
    assert lorakit.list_adapters(model) == [name for name, _ in ADAPTERS]
    got = _outputs_per_adapter(model, ids, lorakit.set_adapter)
    for name, _ in ADAPTERS:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_only_adapter_with_a_non_default_name(peft, tmp_path, ids) -> None:
    """PEFT saves a first adapter named "mine" in path/mine too; both tools read each other's."""
    base = tiny_llama()
    reference = peft_model(base, adapter_name="mine", target_modules=["k_proj"])
    reference.save_pretrained(tmp_path / "peft")
    assert _files(tmp_path / "peft") == {"mine/adapter_config.json", "mine/adapter_model.safetensors"}
    model = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "peft", "mine")
    torch.testing.assert_close(forward(model, ids), forward(reference, ids))

    saved = lorakit.save_adapter(model, tmp_path / "lorakit", "mine")
    assert saved == tmp_path / "lorakit" / "mine"
    back = peft.PeftModel.from_pretrained(copy.deepcopy(base), saved, adapter_name="mine")
    torch.testing.assert_close(forward(back, ids), forward(reference, ids))


def test_load_under_another_name(tmp_path, ids) -> None:
    base = tiny_llama()
    model = _lorakit_with_adapters(base)
    lorakit.save_adapter(model, tmp_path, "other")
    lorakit.set_adapter(model, "other")
    loaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "other", "renamed")
    assert lorakit.list_adapters(loaded) == ["renamed"]
    torch.testing.assert_close(forward(loaded, ids), forward(model, ids))


# -- PiSSA: PEFT writes the trained A, B and init_lora_weights="pissa"; loading replays the SVD on the base ------------
def _train_a_little(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.05)


def test_peft_pissa_adapter_loads_in_lorakit(peft, tmp_path, ids) -> None:
    base = tiny_llama()
    reference = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa"))
    _train_a_little(reference)
    reference.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    model = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(forward(model, ids), forward(reloaded, ids))
    torch.testing.assert_close(forward(model, ids), forward(reference, ids))
    # both rewrote the base weight to the same residual W - s*B0@A0
    residual = reloaded.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    ours = model.model.layers[0].self_attn.q_proj.base_layer.weight
    torch.testing.assert_close(ours, residual)
    assert not torch.allclose(ours, base.model.layers[0].self_attn.q_proj.weight)


def test_lorakit_pissa_adapter_loads_in_peft(peft, tmp_path, ids) -> None:
    base = tiny_llama()
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa")
    model = lorakit.add_adapter(copy.deepcopy(base), config)
    _train_a_little(model)
    lorakit.save_adapter(model, tmp_path)
    reference = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(forward(reference, ids), forward(model, ids))
    assert not torch.allclose(forward(model, ids), forward(base, ids), atol=1e-3)


@pytest.mark.parametrize("init", ["olora", "gaussian", "eva", "orthogonal", "mica"])
def test_peft_adapters_of_other_inits_load_in_lorakit(peft, tmp_path, ids, init: str) -> None:
    """OLoRA rewrites the base (replayed on load); EVA / orthogonal / MiCA only choose the first A and B, which the
    file's tensors replace, so lorakit loads them as plain LoRA."""
    base = tiny_llama()
    reference = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=init))
    _train_a_little(reference)
    reference.save_pretrained(tmp_path)
    model = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(forward(model, ids), forward(reference, ids))


def test_lorakit_olora_adapter_loads_in_peft(peft, tmp_path, ids) -> None:
    base = tiny_llama()
    config = lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="olora")
    model = lorakit.add_adapter(copy.deepcopy(base), config)
    _train_a_little(model)
    lorakit.save_adapter(model, tmp_path)
    reference = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(forward(reference, ids), forward(model, ids))


# -- PEFT's pickle files ---------------------------------------------------------------------------------------------
def test_peft_pickle_file_loads_only_when_allowed(peft, tmp_path, ids) -> None:
    base = tiny_llama()
    reference = peft_model(base, target_modules=["q_proj"])
    reference.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file()
    with pytest.raises(lorakit.AdapterFileError, match="allow_pickle=True"):
        lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    model = lorakit.load_adapter(copy.deepcopy(base), tmp_path, allow_pickle=True)
    torch.testing.assert_close(forward(model, ids), forward(reference, ids))
