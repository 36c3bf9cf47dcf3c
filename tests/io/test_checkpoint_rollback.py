"""After any failed load the model is exactly as before: same module objects, tensors (base weights included),
requires_grad flags, adapters, active adapters and outputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lorakit
from lorakit import AdapterFileError
from tests.helpers import tiny_bert_seq_cls, tiny_llama
from tests.io.metadata_support import read_records, rewrite_weights
from tests.io.support import assert_unchanged, snapshot
from tests.io.test_checkpoint_errors import edit_config, edit_weights, save

LAYER1_V = "base_model.model.model.layers.1.self_attn.v_proj"


def _drop(key: str):
    return lambda tensors: tensors.pop(key)


def _truncate(directory) -> None:
    data = (directory / "adapter_model.safetensors").read_bytes()
    (directory / "adapter_model.safetensors").write_bytes(data[:-100])


def _other_base(directory) -> None:
    fingerprint = read_records(directory)["lorakit_fingerprint"]
    fingerprint["layer_shapes"]["model.layers.1.self_attn.v_proj"] = [16, 64]
    rewrite_weights(directory, lorakit_fingerprint=json.dumps(fingerprint))


# kind -> (settings of the saved adapter, how the directory is broken, load keyword arguments)
FAILURES = {
    # refused while reading or checking the files, before the model is touched
    "corrupt_config": (dict(), lambda d: (d / "adapter_config.json").write_text("{"), {}),
    "truncated_weights": (dict(), _truncate, {}),
    "fingerprint": (dict(), _other_base, {}),
    # refused after the layers were injected
    "rank_mismatch": (dict(), lambda d: edit_config(d, r=4), {}),
    "missing_tensor": (dict(), lambda d: edit_weights(d, _drop(f"{LAYER1_V}.lora_B.weight")), {}),
    "unknown_tensor": (dict(), lambda d: edit_weights(d, lambda t: t.update(
        {"base_model.model.model.layers.1.mlp.up_proj.lora_A.weight": torch.zeros(8, 32)})), {}),
    "targets_nothing": (dict(), lambda d: edit_config(d, target_modules=["query"]), {}),
    # PiSSA rewrites the base weights while injecting (a raw PiSSA file: the base is decomposed again on load):
    # they must be put back
    "pissa_missing_tensor": (dict(init_lora_weights="pissa", pissa_raw=True),
                             lambda d: edit_weights(d, _drop(f"{LAYER1_V}.lora_A.weight")), {}),
    # a trainable load with bias="all" unfreezes every bias; a head in modules_to_save gets wrapped
    "bias_all_trainable": (dict(bias="all", target_modules=["o_proj", "down_proj"]),
                           lambda d: edit_config(d, r=2), {"trainable": True}),
    "dora_missing_magnitude": (dict(use_dora=True),
                               lambda d: edit_weights(d, _drop(f"{LAYER1_V}.lora_magnitude_vector")), {}),
}


def _llama_with_bias() -> torch.nn.Module:
    return tiny_llama(attention_bias=True, mlp_bias=True)


@pytest.fixture(params=["fresh", "with_adapter"])
def model(request) -> torch.nn.Module:
    """A model straight from its constructor (all trainable), or one with an active adapter of its own."""
    model = _llama_with_bias()
    if request.param == "with_adapter":
        config = lorakit.LoraConfig(r=2, target_modules=["q_proj", "k_proj"], init_lora_weights=False)
        lorakit.add_adapter(model, config, "keep")
    return model


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_failed_load_leaves_the_model_as_it_was(tmp_path, ids, model, kind: str) -> None:
    settings, break_it, kwargs = FAILURES[kind]
    directory = save(tmp_path, _llama_with_bias(), **settings)
    break_it(directory)
    before = snapshot(model, ids)
    with pytest.raises(AdapterFileError):
        lorakit.load_adapter(model, directory, **kwargs)
    assert_unchanged(before, model, ids)


def test_failed_load_of_a_head_unwraps_it(tmp_path, ids) -> None:
    base = tiny_bert_seq_cls()
    directory = save(tmp_path, base, target_modules=["query"], modules_to_save=["classifier"])
    edit_weights(directory, _drop("base_model.model.classifier.bias"))
    model = copy.deepcopy(base)
    before = snapshot(model, ids)
    with pytest.raises(AdapterFileError, match="classifier"):
        lorakit.load_adapter(model, directory)
    assert_unchanged(before, model, ids)
    assert type(model.classifier) is torch.nn.Linear


def test_the_same_load_succeeds_after_a_failed_one(tmp_path, ids) -> None:
    """No half-registered name is left behind to block the retry."""
    directory = save(tmp_path, _llama_with_bias())
    config = (directory / "adapter_config.json").read_text()
    edit_config(directory, r=4)
    model = _llama_with_bias()
    with pytest.raises(AdapterFileError):
        lorakit.load_adapter(model, directory)
    (directory / "adapter_config.json").write_text(config)
    lorakit.load_adapter(model, directory)
    assert lorakit.list_adapters(model) == ["default"]
