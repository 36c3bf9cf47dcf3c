"""AdaLoRA files: lorakit's load in PEFT's AdaLoRA with the same outputs, and PEFT's load in lorakit."""

import json
import warnings

import pytest
import torch

import lorakit
from lorakit.errors import AdapterFileError
from lorakit.variants import AdaLoraConfig, hooks_for, load_adalora, save_adalora
from lorakit.variants.adalora import adalora_layers, rank_per_layer
from tests.helpers import logits, tiny_llama, token_ids
from tests.variants.loop import train_steps

peft = pytest.importorskip("peft")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about r != 8 and similar; not what these tests check
        yield


def trained_adalora():
    """A tiny Llama with an AdaLoRA adapter trained (and pruned) for a few steps: ranks differ per layer."""
    model = tiny_llama()
    lorakit.add_adapter(model, AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, total_step=8, tinit=1, tfinal=2,
                                             target_modules=["q_proj", "v_proj"]))
    train_steps(model, token_ids(batch=4, seq=16), steps=8, hooks=hooks_for(model))
    return model.eval()


def test_lorakit_adalora_loads_in_peft_with_same_outputs(tmp_path) -> None:
    model = trained_adalora()
    ranks = rank_per_layer(model)
    assert sum(ranks.values()) == 8 and len(set(ranks.values())) > 1  # pruned, unevenly
    save_adalora(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA"
    assert {k: sum(v) for k, v in saved["rank_pattern"].items()} == {f"{p}.lora_E": r for p, r in ranks.items()}
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    assert type(loaded.peft_config["default"]).__name__ == "AdaLoraConfig"
    ids = token_ids()
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids))


def test_peft_adalora_loads_in_lorakit_with_same_outputs(tmp_path) -> None:
    config = peft.AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, total_step=10, target_modules=["q_proj", "v_proj"])
    theirs = peft.get_peft_model(tiny_llama(), config)
    with torch.no_grad():  # Λ is zero at init: randomize it, then prune by hand as PEFT's allocator would
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.5)
    pattern = {}
    for name, _ in theirs.base_model.model.named_parameters():
        if "lora_E" in name:
            keep = [True, False, True, True] if "layers.0" in name else [False, True, False, False]
            pattern[name] = keep
    theirs.peft_config["default"].rank_pattern = pattern
    theirs.base_model.rankallocator.mask_using_rank_pattern(theirs.base_model.model, pattern)
    theirs.save_pretrained(tmp_path)
    ours = load_adalora(tiny_llama(), tmp_path)
    assert rank_per_layer(ours) == {"model.layers.0.self_attn.q_proj": 3, "model.layers.0.self_attn.v_proj": 3,
                                    "model.layers.1.self_attn.q_proj": 1, "model.layers.1.self_attn.v_proj": 1}
    ids = token_ids()
    torch.testing.assert_close(logits(ours, ids), logits(theirs.eval(), ids))


def test_round_trip_in_lorakit_keeps_outputs_and_ranks(tmp_path) -> None:
    model = trained_adalora()
    lorakit.save_adapter(model, tmp_path)  # dispatches to save_adalora
    again = load_adalora(tiny_llama(), tmp_path)
    ids = token_ids()
    torch.testing.assert_close(logits(again, ids), logits(model, ids))
    assert rank_per_layer(again) == rank_per_layer(model)
    assert all(layer.ranknum["default"] == 4 for _, layer in adalora_layers(again, "default"))  # scale unchanged


def test_merge_and_unload_gives_the_adapter_outputs() -> None:
    model = trained_adalora()
    ids = token_ids()
    expected = logits(model, ids)
    merged = lorakit.merge_and_unload(model)
    torch.testing.assert_close(logits(merged, ids), expected)


def test_loading_a_file_with_wrong_ranks_is_refused_and_leaves_the_model(tmp_path) -> None:
    save_adalora(trained_adalora(), tmp_path)
    config_path = tmp_path / "adapter_config.json"
    values = json.loads(config_path.read_text())
    key = next(iter(values["rank_pattern"]))
    values["rank_pattern"][key] = [True] * 4  # claims rank 4, the tensors hold fewer
    config_path.write_text(json.dumps(values))
    model = tiny_llama()
    with pytest.raises(AdapterFileError, match="rank_pattern"):
        load_adalora(model, tmp_path)
    assert lorakit.list_adapters(model) == [] and not adalora_layers(model, "default")
