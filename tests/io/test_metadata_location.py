"""lorakit's records (fingerprint, version, checksums) live in the safetensors metadata, not in adapter_config.json:
PEFT loads lorakit adapters without its "unknown keys, upgrade PEFT" warning; old files (keys in the config) still
load and are still verified; edited weights and a foreign base are refused."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save

import lorakit
from lorakit.errors import AdapterFileError
from lorakit.io.checkpoint import read_adapter
from tests.helpers import logits, tiny_llama, token_ids
from tests.variants.loop import train_steps

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def plain(path: Path) -> torch.nn.Module:
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    lorakit.save_adapter(model, path)
    return model


def adalora(path: Path) -> torch.nn.Module:
    from lorakit.variants import AdaLoraConfig, hooks_for, save_adalora

    model = tiny_llama()
    lorakit.add_adapter(model, AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, total_step=4, tinit=1, tfinal=1,
                                             target_modules=["q_proj", "v_proj"]))
    train_steps(model, token_ids(batch=2, seq=8), steps=4, hooks=hooks_for(model))
    save_adalora(model.eval(), path)
    return model


def delta_lora(path: Path) -> torch.nn.Module:
    from lorakit.variants import DeltaLoraConfig, DeltaLoraHook, save_delta_lora

    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    hook = DeltaLoraHook(model, DeltaLoraConfig(update_ratio=1.0, start_step=0))
    train_steps(model, token_ids(seq=8), steps=2, hooks=[hook], lr=2e-2)
    save_delta_lora(model.eval(), path, hook)
    return model


def pissa(path: Path) -> torch.nn.Module:
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights="olora"))
    lorakit.save_adapter(model, path)
    return model


@pytest.mark.parametrize("make", [plain, adalora, delta_lora, pissa])
def test_peft_loads_lorakit_adapters_silently(tmp_path, caplog, make) -> None:
    peft = pytest.importorskip("peft")
    model = make(tmp_path)
    assert not [k for k in json.loads((tmp_path / CONFIG).read_text()) if k.startswith("lorakit")]
    ids = token_ids()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "lorakit" in m or "Unexpected keyword" in m or "upgrade" in m.lower()], said
    torch.testing.assert_close(logits(theirs, ids), logits(model.eval(), ids))


def test_records_are_in_the_weights_metadata_and_read_adapter_returns_them(tmp_path) -> None:
    plain(tmp_path)
    with safe_open(tmp_path / WEIGHTS, "pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt" and metadata["lorakit_version"] == lorakit.__version__
    config_bytes = (tmp_path / CONFIG).read_bytes()
    assert metadata["lorakit_config_sha256"] == hashlib.sha256(config_bytes).hexdigest()
    _, extra, _, _ = read_adapter(tmp_path)
    assert extra["lorakit_fingerprint"] == json.loads(metadata["lorakit_fingerprint"])
    assert extra["lorakit_fingerprint"]["model_type"] == "llama"
    assert extra["lorakit_version"] == lorakit.__version__
    assert extra["lorakit_weights_sha256"] == metadata["lorakit_weights_sha256"]


def flip_last_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_edited_weights_are_refused(tmp_path) -> None:
    plain(tmp_path)
    flip_last_tensor_byte(tmp_path / WEIGHTS)
    with pytest.raises(AdapterFileError, match="does not match the checksum"):
        lorakit.load_adapter(tiny_llama(), tmp_path)


def test_an_adapter_for_another_base_is_refused(tmp_path) -> None:
    plain(tmp_path)
    other = tiny_llama(num_key_value_heads=4)  # v_proj is (32, 32) here, (16, 32) in the adapter's base
    with pytest.raises(AdapterFileError, match=r"does not fit this base model: layer model.layers.0.self_attn.v_proj"):
        lorakit.load_adapter(other, tmp_path)


def old_layout(path: Path) -> None:
    """Rewrite a saved adapter as lorakit wrote it before: records in adapter_config.json, the checksum of the whole
    weights file there too, no lorakit metadata in the weights."""
    _, extra, _, _ = read_adapter(path)
    weights = safetensors_save(load_file(path / WEIGHTS), metadata={"format": "pt"})
    (path / WEIGHTS).write_bytes(weights)
    config = json.loads((path / CONFIG).read_text())
    config.update(lorakit_version=extra["lorakit_version"], lorakit_fingerprint=extra["lorakit_fingerprint"],
                  lorakit_weights_sha256=hashlib.sha256(weights).hexdigest())
    (path / CONFIG).write_text(json.dumps(config))


def test_old_layout_still_loads(tmp_path) -> None:
    model = plain(tmp_path)
    old_layout(tmp_path)
    ids = token_ids()
    torch.testing.assert_close(logits(lorakit.load_adapter(tiny_llama(), tmp_path), ids), logits(model, ids))
    assert read_adapter(tmp_path)[1]["lorakit_fingerprint"]["model_type"] == "llama"


def test_old_layout_edited_weights_are_refused(tmp_path) -> None:
    plain(tmp_path)
    old_layout(tmp_path)
    flip_last_tensor_byte(tmp_path / WEIGHTS)
    with pytest.raises(AdapterFileError, match="does not match the checksum"):
        lorakit.load_adapter(tiny_llama(), tmp_path)


def test_old_layout_fingerprint_is_still_checked(tmp_path) -> None:
    plain(tmp_path)
    old_layout(tmp_path)
    with pytest.raises(AdapterFileError, match="does not fit this base model"):
        lorakit.load_adapter(tiny_llama(num_key_value_heads=4), tmp_path)
