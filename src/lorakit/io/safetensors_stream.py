"""Read and write safetensors files one tensor at a time, with plain file reads and writes instead of a memory map.

Why not `safetensors.safe_open`: it maps the whole file, and every page a read touches stays in the process's
resident set until the file is closed, so reading a 5 GB shard tensor by tensor still costs 5 GB of RSS. Loading
a 7B model to quantize it (hf/stream_load.py) or merging it shard by shard (merge_shards.py) must hold one tensor
at a time, not one shard: here each tensor is read into its own buffer and freed when the caller drops it, and a
shard is written tensor by tensor behind a header computed up front. The format (an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw bytes) is the safetensors library's;
tests/io/test_safetensors_stream.py checks both directions against it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from lorakit.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets inside the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsReader:
    """One file's header and its tensors, read on demand: `reader.read(name)` or `for name, t in reader`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close() / the context manager
        try:
            self.entries, self.metadata, self._data_start = _read_header(self._file, self.path)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        buffer = bytearray(entry.nbytes)
        self._file.seek(self._data_start + entry.begin)
        if self._file.readinto(buffer) != entry.nbytes:
            raise ConfigError(f"{self.path} is corrupt or truncated: tensor {name!r} ends past the end of the file; "
                              "download it again")
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        return torch.frombuffer(buffer, dtype=entry.dtype).reshape(entry.shape)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Tensors in file order (sequential reads)."""
        for entry in sorted(self.entries.values(), key=lambda e: e.begin):
            yield entry.name, self.read(entry.name)


def _read_header(handle: BinaryIO, path: Path) -> tuple[dict[str, Entry], dict[str, str], int]:
    head = handle.read(8)
    if len(head) != 8:
        raise ConfigError(f"{path} is corrupt or truncated: shorter than a safetensors header; download it again")
    (size,) = struct.unpack("<Q", head)
    if size > 100 * 2**20:
        raise ConfigError(f"{path} is corrupt or truncated: not a safetensors file (its header claims {size} bytes)")
    try:
        header = json.loads(handle.read(size))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is corrupt or truncated: its safetensors header does not parse ({exc}); "
                          "download it again") from None
    metadata = header.pop("__metadata__", None) or {}
    entries: dict[str, Entry] = {}
    for name, info in header.items():
        if info.get("dtype") not in DTYPES:
            raise ConfigError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}, which lorakit cannot read")
        begin, end = info["data_offsets"]
        entries[name] = Entry(name, DTYPES[info["dtype"]], tuple(info["shape"]), begin, end)
    return entries, metadata, 8 + size


class SafetensorsWriter:
    """Writes a file whose tensors are all declared up front (name -> dtype, shape), then written one at a time in
    that order with `write(name, tensor)`; `close()` checks that every declared tensor was written."""

    def __init__(self, handle: BinaryIO, layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        self._order: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        for name, (dtype, shape) in layout.items():
            size = math.prod(shape) * _itemsize(dtype)
            header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._order.append((name, dtype, tuple(shape)))
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as the library writes it
        handle.write(struct.pack("<Q", len(raw)) + raw)
        self._handle = handle
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order) or self._order[self._next][0] != name:
            expected = self._order[self._next][0] if self._next < len(self._order) else "nothing"
            raise ValueError(f"tensors must be written in their declared order: got {name!r}, expected {expected!r}")
        _, dtype, shape = self._order[self._next]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: declared {dtype} {shape}, got {tensor.dtype} {tuple(tensor.shape)}")
        data = tensor.detach().cpu().contiguous()
        if data.numel():
            self._handle.write(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            raise ValueError(f"{len(self._order) - self._next} declared tensor(s) were never written")


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def checkpoint_files(folder: Path) -> list[Path] | None:
    """The safetensors files of a transformers checkpoint folder (sharded with an index, or one file), in order;
    None when the folder holds no safetensors checkpoint (a .bin checkpoint, a GGUF file)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{index} is not a safetensors index ({exc}); re-save the model") from None
        names = list(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ConfigError(f"{index} names shard {missing[0]!r}, which is not in {folder}; the download is "
                              "incomplete")
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else None
