"""A GGUF file as model.path: which file a path names, its architecture read from the header (checked against
gguf's own GGUFReader), and one-line errors. Loading and training on the real SmolLM2 GGUF: test_gguf_models.py."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import gguf
import pytest
import torch

from lorakit.errors import ConfigError
from lorakit.hf import gguf as lorakit_gguf
from lorakit.hf.paths import is_local_model, resolve_model_path, task_of_checkpoint


def write_gguf(path, arch: str, endian=gguf.GGUFEndian.LITTLE, arch_last: bool = True):
    """A GGUF with metadata only (no tensors) and every kind of value before general.architecture."""
    writer = gguf.GGUFWriter(path, arch, endianess=endian)
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bc", "déf"])
    writer.add_array("tokenizer.ggml.scores", [0.5, 1.5])
    writer.add_array("nested.ints", [[1, 2], [3]])
    writer.add_array("nested.strings", [["x"], ["yz", "w"]])
    writer.add_uint32("x.count", 7)
    writer.add_float64("x.float", 1.5)
    writer.add_bool("x.flag", True)
    writer.add_int8("x.small", -3)
    if arch_last:  # llama.cpp writes it first; the reader must not depend on that
        writer.kv_data[0]["general.architecture"] = writer.kv_data[0].pop("general.architecture")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def linked(folder, *targets):
    """`folder` holding symlinks to `targets` (the real file is 98 MB: never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for target in targets:
        (folder / target.name).symlink_to(target)
    return folder


def test_a_gguf_file_is_a_model_path(smollm2_gguf):
    assert resolve_model_path(str(smollm2_gguf)) == smollm2_gguf
    assert is_local_model(smollm2_gguf)


def test_a_folder_holding_one_gguf_names_that_file(tmp_path, smollm2_gguf):
    folder = linked(tmp_path / "model", smollm2_gguf)
    (folder / "README.md").write_text("not a model")
    assert resolve_model_path(str(folder)) == folder / smollm2_gguf.name
    assert not is_local_model(folder)  # a folder is only searched when it is model.path itself


def test_a_folder_with_config_json_is_a_transformers_model_even_beside_a_gguf(tmp_path, smollm2_gguf):
    folder = linked(tmp_path / "model", smollm2_gguf)
    (folder / "config.json").write_text("{}")
    assert resolve_model_path(str(folder)) == folder


def test_a_folder_with_two_ggufs_asks_to_name_one(tmp_path, smollm2_gguf):
    other = write_gguf(tmp_path / "other.gguf", "llama")
    folder = linked(tmp_path / "model", smollm2_gguf, other)
    with pytest.raises(ConfigError) as caught:
        resolve_model_path(str(folder))
    message = str(caught.value)
    assert "\n" not in message and "2 GGUF files" in message and "name one" in message
    assert smollm2_gguf.name in message and "other.gguf" in message


def test_a_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"expected a Hugging Face model directory .*a GGUF file.*no such"):
        resolve_model_path(str(tmp_path / "absent.gguf"))


def test_the_real_files_architecture_matches_ggufs_reader(smollm2_gguf):
    expected = gguf.GGUFReader(smollm2_gguf).get_field("general.architecture").contents()
    assert lorakit_gguf.architecture(smollm2_gguf) == expected == "llama"
    assert task_of_checkpoint(smollm2_gguf) == "causal-lm"


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
@pytest.mark.parametrize("arch", ["qwen2", "t5"])
def test_the_architecture_is_found_past_every_kind_of_value(tmp_path, endian, arch):
    path = write_gguf(tmp_path / "m.gguf", arch, endian)
    reader = gguf.GGUFReader(path)
    assert list(reader.fields)[-1] == "general.architecture"  # the file really puts it last
    assert lorakit_gguf.architecture(path) == reader.get_field("general.architecture").contents() == arch
    assert task_of_checkpoint(path) == {"qwen2": "causal-lm", "t5": "seq2seq"}[arch]


@pytest.mark.parametrize(("content", "message"), [
    (b"PK\x03\x04 a zip file", "is not a GGUF file"),
    (None, "damaged GGUF header"),  # a real header cut short
    (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 62), "damaged GGUF header"),  # a key 2**62 bytes long
])
def test_a_broken_file_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "m.gguf"
    if content is None:
        write_gguf(path, "llama")
        content = path.read_bytes()[:100]
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        lorakit_gguf.architecture(path)
    assert "\n" not in str(caught.value)


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    real = lorakit_gguf.importlib.util.find_spec
    monkeypatch.setattr(lorakit_gguf.importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the package\(s\) accelerate: pip install 'lorakit\[gguf\]'"):
        lorakit_gguf.architecture(write_gguf(tmp_path / "m.gguf", "llama"))


def test_from_pretrained_gets_an_absolute_path_a_dense_load_and_float32_for_auto(tmp_path, monkeypatch):
    """The arguments transformers gets (the real load is in test_gguf_models.py): a relative model.path still
    works from another working directory, and dtype=auto (a GGUF has no training dtype) means float32."""
    calls = []

    class Auto:
        @staticmethod
        def from_pretrained(folder, **kwargs):
            calls.append((folder, kwargs))
            return torch.nn.Linear(1, 1)

    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    for dtype in ("auto", torch.bfloat16):
        lorakit_gguf.load_dense(Auto, Path("models/m.gguf"), dtype=dtype)
    assert [c[0] for c in calls] == [str(tmp_path / "models")] * 2
    assert [c[1]["gguf_file"] for c in calls] == [str(tmp_path / "models" / "m.gguf")] * 2
    assert [c[1]["dtype"] for c in calls] == [torch.float32, torch.bfloat16]
    assert all(c[1]["quantization_config"].dequantize for c in calls)


def test_an_adapter_recording_a_gguf_base_finds_it(tmp_path, smollm2_gguf):
    from lorakit.cli.base_model import base_for_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(smollm2_gguf)}))
    assert base_for_adapter(adapter, None, "merge") == smollm2_gguf
    assert os.path.samefile(base_for_adapter(adapter, str(smollm2_gguf.parent), "merge"), smollm2_gguf)
