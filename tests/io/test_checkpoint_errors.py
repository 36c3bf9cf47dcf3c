"""Every way an adapter directory can be wrong gives one clear AdapterFileError (message checked), never a traceback
from deeper down. (That the model is untouched afterwards: test_checkpoint_rollback.py.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit import AdapterFileError
from tests.helpers import tiny_llama
from tests.io.metadata_support import rewrite_weights

Q0 = "model.layers.0.self_attn.q_proj"
WIDE = dict(hidden_size=64, intermediate_size=128)  # a llama twice as wide as the tiny one


def save(tmp_path: Path, base: torch.nn.Module | None = None, name: str = "default", pissa_raw: bool = False,
         **settings) -> Path:
    """Save an adapter of `base` (default: tiny llama, r=8 on q_proj/v_proj); returns its directory."""
    settings = {"r": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False, **settings}
    model = lorakit.add_adapter(copy.deepcopy(base or tiny_llama()), lorakit.LoraConfig(**settings), name)
    return lorakit.save_adapter(model, tmp_path / "adapter", name, pissa_raw=pissa_raw)


def edit_config(directory: Path, drop_checks: bool = False, **changes) -> None:
    """Change adapter_config.json; drop_checks removes lorakit's records (the weights' metadata; config keys in
    older files), making it a plain PEFT file."""
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    if drop_checks:
        config = {k: v for k, v in config.items() if not k.startswith("lorakit_")}
        if (directory / "adapter_model.safetensors").is_file():
            rewrite_weights(directory, keep_metadata=False)
    path.write_text(json.dumps(config))


def edit_weights(directory: Path, edit) -> None:
    """Rewrite the tensors with edit(dict) and drop the checksums (as a file written by another tool would be)."""
    tensors = load_file(directory / "adapter_model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "adapter_model.safetensors")
    edit_config(directory, drop_checks=True)


def load(directory: Path, model: torch.nn.Module | None = None, **kwargs):
    return lorakit.load_adapter(model if model is not None else tiny_llama(), directory, **kwargs)


# -- the directory and its config -----------------------------------------------------------------------------------
def test_missing_directory(tmp_path) -> None:
    with pytest.raises(AdapterFileError, match=r"adapter directory .*nowhere does not exist"):
        load(tmp_path / "nowhere")


def test_directory_without_config_lists_what_it_holds(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(AdapterFileError, match=r"no adapter_config.json in .*; found \['notes.txt'\]"):
        load(tmp_path)


def test_path_to_a_file_points_at_its_directory(tmp_path) -> None:
    directory = save(tmp_path)
    with pytest.raises(AdapterFileError, match=r"adapter_model\.safetensors is a file; pass the adapter's directory"):
        load(directory / "adapter_model.safetensors")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"r": 8,', r"adapter_config.json is not valid JSON \(line 1"),
        (b"\xff\xfe\x00garbage", r"adapter_config.json could not be read as a JSON text file"),
        (b"[1, 2]", r"adapter_config.json should hold a JSON object, found list"),
    ],
    ids=["truncated_json", "binary", "not_an_object"],
)
def test_corrupt_config(tmp_path, content: bytes, message: str) -> None:
    directory = save(tmp_path)
    (directory / "adapter_config.json").write_bytes(content)
    with pytest.raises(AdapterFileError, match=message):
        load(directory)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"r": 0}, r"r=0: the rank must be a positive integer"),
        ({"lora_alpha": "much"}, r"lora_alpha='much'"),
        ({"peft_type": "IA3"}, r"peft_type='IA3'"),
        ({"use_qalora": True}, r"use_qalora=True, a PEFT feature lorakit does not support"),
    ],
)
def test_invalid_config_values_name_the_key(tmp_path, changes: dict, message: str) -> None:
    directory = save(tmp_path)
    edit_config(directory, **changes)
    with pytest.raises(AdapterFileError, match=message):
        load(directory)


# -- the weights file ------------------------------------------------------------------------------------------------
def test_missing_weights(tmp_path) -> None:
    directory = save(tmp_path)
    (directory / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterFileError, match=r"no adapter weights in .*expected adapter_model.safetensors"):
        load(directory)


def test_truncated_weights_with_checksum(tmp_path) -> None:
    directory = save(tmp_path)
    data = (directory / "adapter_model.safetensors").read_bytes()
    (directory / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match=r"does not match the checksum in its metadata"):
        load(directory)


@pytest.mark.parametrize("keep", [0.5, 0.01], ids=["half", "header_only"])
def test_truncated_weights_without_checksum(tmp_path, keep: float) -> None:
    directory = save(tmp_path)
    edit_config(directory, drop_checks=True)  # as PEFT writes it
    data = (directory / "adapter_model.safetensors").read_bytes()
    (directory / "adapter_model.safetensors").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(AdapterFileError, match=r"adapter_model\.safetensors is corrupt or truncated"):
        load(directory)


def test_edited_weights_fail_the_checksum(tmp_path) -> None:
    directory = save(tmp_path)
    # an edit that keeps the metadata (a file rewritten wholesale without it is a plain PEFT file, loaded as such)
    rewrite_weights(directory, lambda t: t[f"base_model.model.{Q0}.lora_A.weight"][0, 0].add_(1))
    with pytest.raises(AdapterFileError, match="does not match the checksum"):
        load(directory)


def test_pickle_is_refused_by_default(tmp_path) -> None:
    directory = save(tmp_path)
    tensors = load_file(directory / "adapter_model.safetensors")
    (directory / "adapter_model.safetensors").unlink()
    torch.save(tensors, directory / "adapter_model.bin")
    edit_config(directory, drop_checks=True)
    with pytest.raises(AdapterFileError, match=r"adapter_model.bin is a pickle file.*allow_pickle=True"):
        load(directory)


class NotATensor:
    """Unpickling this needs arbitrary code (a class lookup): torch.load(weights_only=True) must refuse it."""


def test_allowed_pickle_is_still_read_with_weights_only(tmp_path) -> None:
    directory = save(tmp_path)
    (directory / "adapter_model.safetensors").unlink()
    torch.save({"x": NotATensor()}, directory / "adapter_model.bin")
    edit_config(directory, drop_checks=True)
    with pytest.raises(AdapterFileError, match=r"adapter_model\.bin could not be read safely"):
        load(directory, allow_pickle=True)


# -- tensors that do not fit the model -------------------------------------------------------------------------------
def test_wrong_input_size_names_layer_and_both_sizes(tmp_path) -> None:
    """A PEFT file (no fingerprint) for a hidden size of 64, loaded onto a model of hidden size 32."""
    # down_proj sorts before q_proj by name; the message names the first layer in model order
    directory = save(tmp_path, tiny_llama(**WIDE), target_modules=["q_proj", "down_proj"])
    edit_config(directory, drop_checks=True)
    expected = f"adapter layer {Q0}: lora_A is (8, 64) in the file, the model's layer takes 32 inputs"
    with pytest.raises(AdapterFileError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load(directory)


def test_rank_differing_from_the_config(tmp_path) -> None:
    directory = save(tmp_path)
    edit_config(directory, r=4)
    with pytest.raises(AdapterFileError, match=rf"{Q0}: lora_A is \(8, 32\) in the file, rank 8 in the file, but "
                                               r"adapter_config.json gives this layer r=4"):
        load(directory)


def test_tensors_for_layers_the_model_lacks(tmp_path) -> None:
    directory = save(tmp_path, tiny_llama(num_hidden_layers=3))
    edit_config(directory, drop_checks=True)
    with pytest.raises(AdapterFileError, match=r"has tensor base_model.model.model.layers.2.self_attn.q_proj.lora_A"
                                               r".weight, which matches no parameter of this model"):
        load(directory)


def test_missing_tensors_are_named(tmp_path) -> None:
    directory = save(tmp_path)
    edit_weights(directory, lambda t: t.pop("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"))
    with pytest.raises(AdapterFileError, match=r"lacks 1 tensor\(s\) that its adapter_config.json asks for, e.g. "
                                               r"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"):
        load(directory)


def test_config_targets_that_match_nothing(tmp_path) -> None:
    directory = save(tmp_path)
    edit_config(directory, target_modules=["query"])
    with pytest.raises(AdapterFileError, match=r"target_modules=\['query'\] matched no layer"):
        load(directory)


def test_adapter_name_that_would_leave_the_folder(tmp_path) -> None:
    directory = save(tmp_path)
    with pytest.raises(lorakit.AdapterError, match=r"adapter name '\.\./adapter': use letters"):
        lorakit.load_adapter(tiny_llama(), directory / "sub", "../adapter")


def test_name_already_taken(tmp_path) -> None:
    directory = save(tmp_path)
    model = load(directory)
    with pytest.raises(AdapterFileError, match="already has an adapter named 'default'"):
        load(directory, model)


# -- the base-model fingerprint --------------------------------------------------------------------------------------
def test_fingerprint_refuses_another_hidden_size(tmp_path) -> None:
    directory = save(tmp_path, tiny_llama(**WIDE), target_modules=["q_proj", "down_proj"])
    with pytest.raises(AdapterFileError, match=rf"layer {Q0} has weight shape \(64, 64\) in the model the adapter "
                                               r"was saved from, and \(32, 32\) in this one"):
        load(directory)


def test_fingerprint_refuses_another_model_type(tmp_path) -> None:
    """A Mistral of the same sizes has the same layer names and shapes: only the fingerprint tells them apart."""
    from transformers import MistralConfig, MistralForCausalLM

    mistral = MistralForCausalLM(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=128))
    directory = save(tmp_path)
    with pytest.raises(AdapterFileError, match=r"was made for a 'llama' model \(LlamaForCausalLM\); this model is "
                                               r"'mistral' \(MistralForCausalLM\)"):
        load(directory, mistral)
    edit_config(directory, drop_checks=True)
    load(directory, mistral)  # without the fingerprint, nothing would have noticed


def test_fingerprint_warns_on_another_class_or_vocab(tmp_path) -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    directory = save(tmp_path)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    with pytest.warns(UserWarning) as caught:
        load(directory, LlamaForSequenceClassification(config))
    messages = " ".join(str(w.message) for w in caught)
    assert "saved from a LlamaForCausalLM; loading it onto a LlamaForSequenceClassification" in messages
    assert "vocab_size=128; this model has 100" in messages
