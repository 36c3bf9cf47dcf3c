"""io/safetensors_stream.py reads and writes what the safetensors library writes and reads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.errors import ConfigError
from lorakit.io.safetensors_stream import SafetensorsReader, SafetensorsWriter, checkpoint_files

TENSORS = {
    "w.bf16": torch.randn(5, 7).to(torch.bfloat16),
    "w.f32": torch.randn(3, 64),
    "w.f16": torch.randn(9).half(),
    "ids": torch.arange(11, dtype=torch.int64),
    "mask": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 4),
}


def test_the_library_reads_what_the_writer_wrote(tmp_path):
    path = tmp_path / "a.safetensors"
    with open(path, "wb") as handle:
        writer = SafetensorsWriter(handle, {k: (t.dtype, tuple(t.shape)) for k, t in TENSORS.items()}, {"format": "pt"})
        for name, tensor in TENSORS.items():
            writer.write(name, tensor)
        writer.close()
    loaded = load_file(path)
    assert loaded.keys() == TENSORS.keys()
    for name, tensor in TENSORS.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_the_reader_reads_what_the_library_wrote(tmp_path):
    path = tmp_path / "b.safetensors"
    save_file(TENSORS, str(path), metadata={"format": "pt", "note": "x"})
    with SafetensorsReader(path) as reader:
        assert reader.metadata == {"format": "pt", "note": "x"}
        assert {name for name, _ in reader} == set(TENSORS)
        for name, tensor in TENSORS.items():
            assert torch.equal(reader.read(name), tensor), name


def test_the_writer_refuses_tensors_out_of_order_or_of_another_shape(tmp_path):
    with open(tmp_path / "c.safetensors", "wb") as handle:
        writer = SafetensorsWriter(handle, {"a": (torch.float32, (2,)), "b": (torch.float32, (3,))})
        with pytest.raises(ValueError, match="declared order"):
            writer.write("b", torch.zeros(3))
        with pytest.raises(ValueError, match="declared"):
            writer.write("a", torch.zeros(3))
        writer.write("a", torch.zeros(2))
        with pytest.raises(ValueError, match="never written"):
            writer.close()


def test_a_truncated_or_foreign_file_is_one_clear_error(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"w": torch.randn(100)}, str(path))
    path.write_bytes(path.read_bytes()[:-50])
    with SafetensorsReader(path) as reader, pytest.raises(ConfigError, match="truncated"):
        reader.read("w")
    (tmp_path / "e.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ConfigError, match="corrupt or truncated"):
        SafetensorsReader(tmp_path / "e.safetensors")


def test_checkpoint_files_follow_the_index_and_name_a_missing_shard(tmp_path):
    assert checkpoint_files(tmp_path) is None
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"model-00001-of-00002\.safetensors"):
        checkpoint_files(tmp_path)
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert [p.name for p in checkpoint_files(tmp_path)] == [
        "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"]
