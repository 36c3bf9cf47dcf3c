"""GGUF files (llama.cpp's format) as base models: `model.path` may name a `.gguf` file, or a folder that holds
exactly one and no config.json. transformers reads the file's config, tokenizer and weights (the `gguf` package
parses it; `accelerate` is needed too: the 'gguf' extra installs both) and dequantizes every weight, so the model
lorakit trains on is a plain dense one (a LlamaForCausalLM for a llama GGUF). An adapter trained on it is an
ordinary PEFT adapter for that dense model; its base_model_name_or_path is the .gguf file.
"""

from __future__ import annotations

import importlib.util
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

SUFFIX = ".gguf"
# general.architecture -> model.task for the families that are not decoders; llama.cpp's other names (llama,
# qwen2, gemma2, phi3, mistral, ...) are causal language models
GGUF_TASKS = {"t5": "seq2seq", "umt5": "seq2seq", "t5encoder": "base", "bert": "base", "nomic-bert": "base",
              "jina-bert-v2": "base"}


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == SUFFIX


def gguf_in_folder(folder: Path) -> Path | None:
    """The one .gguf file of a folder without config.json; None when there is none; an error when there are
    several (which one is the model is the user's choice)."""
    if (folder / "config.json").is_file():
        return None  # a transformers model folder; a GGUF beside it is not what loads
    found = sorted(p for p in folder.iterdir() if is_gguf(p) and p.is_file())
    if len(found) > 1:
        raise ConfigError(f"model.path={str(folder)!r} holds {len(found)} GGUF files "
                          f"({', '.join(p.name for p in found)}); name one, e.g. model.path={str(found[0])!r}")
    return found[0] if found else None


def gguf_parts(path: str | Path) -> tuple[Path, str]:
    """(folder, filename): what from_pretrained(folder, gguf_file=...) takes."""
    path = Path(path).expanduser().absolute()
    return path.parent, path.name


def require_gguf(path: str | Path) -> None:
    """A clear error, before transformers raises its own, when a package GGUF loading needs is missing."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{path} is a GGUF file; loading it needs the package(s) {' and '.join(missing)}: "
                          "pip install 'lorakit[gguf]'")


def pretrained_args(path: str | Path) -> tuple[str, dict[str, Any]]:
    """from_pretrained's arguments for a GGUF file: its folder, and gguf_file as an absolute path (a bare name
    would be looked up in the working directory first, and a relative one joined to the folder twice)."""
    require_gguf(path)
    folder, name = gguf_parts(path)
    return str(folder), {"gguf_file": str(folder / name)}


def load_dense(auto_class: Any, path: Path, **kwargs: Any) -> nn.Module:
    """auto_class.from_pretrained on a GGUF file, every weight dequantized into a plain float tensor."""
    import torch
    from transformers import GgufConfig

    folder, extra = pretrained_args(path)
    # dtype="auto" means "the checkpoint's dtype", which a GGUF does not have: its weights are 4- to 8-bit blocks
    # (with a few f16/f32 tensors), and transformers resolves "auto" to the process's default dtype or to the
    # file's float type depending on the architecture. The dequantized base is meant for training adapters on,
    # so "auto" is float32, the same for every file.
    if kwargs.get("dtype", "auto") == "auto":
        kwargs["dtype"] = torch.float32
    # dequantize=True: plain nn.Linear layers even where transformers could keep the blocks packed (its
    # `kernels` package installed), since LoRA wraps dense layers and packed ones cannot be trained or merged into
    model = auto_class.from_pretrained(folder, **extra, quantization_config=GgufConfig(dequantize=True), **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # nothing is quantized any more: without this the model would still call itself a quantized GGUF one
        # (config.quantization_config), which save_pretrained refuses and `lorakit merge` needs to write
        quantizer.remove_quantization_config(model)
    return model


def architecture(path: str | Path) -> str:
    """The file's general.architecture ("llama", "qwen2", ...). Reads the metadata entries up to that one
    (conventionally the first): gguf's GGUFReader parses all of them, the tokenizer's ~50k strings included,
    which takes seconds for SmolLM2-135M."""
    require_gguf(path)
    import numpy as np
    from gguf import GGUF_MAGIC, GGUFReader, GGUFValueType

    sizes = {kind: np.dtype(np_type).itemsize for kind, np_type in GGUFReader.gguf_scalar_to_np.items()}
    try:
        with open(path, "rb") as handle:
            magic, version = struct.unpack("<II", _read(handle, 8))
            if magic != GGUF_MAGIC:
                raise ConfigError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
            order = "<" if version & 0xFFFF else ">"  # a big-endian file's version reads as 0x0N000000 here
            _, entries = struct.unpack(order + "QQ", _read(handle, 16))
            for _ in range(entries):
                key = _string(handle, order)
                kind = GGUFValueType(struct.unpack(order + "I", _read(handle, 4))[0])
                if key == "general.architecture" and kind == GGUFValueType.STRING:
                    return _string(handle, order)
                _skip(handle, kind, order, sizes)
    except (EOFError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: a damaged GGUF header ({exc}); copy or download the file again") from None
    raise ConfigError(f"{path}: the GGUF file has no general.architecture entry, so its model family is unknown")


def task_of(path: str | Path) -> str:
    """The model.task a GGUF file's architecture implies."""
    return GGUF_TASKS.get(architecture(path), "causal-lm")


def _read(handle: BinaryIO, size: int) -> bytes:
    if size > os.fstat(handle.fileno()).st_size - handle.tell():  # a damaged length must not become a huge read
        raise EOFError("the file ends inside its metadata")
    return handle.read(size)


def _string(handle: BinaryIO, order: str) -> str:
    (length,) = struct.unpack(order + "Q", _read(handle, 8))
    return _read(handle, length).decode("utf-8")


def _skip(handle: BinaryIO, kind: Any, order: str, sizes: dict[Any, int]) -> None:
    """Move past one value of GGUF type `kind` (a scalar, a string, or an array of either, nested)."""
    from gguf import GGUFValueType

    if kind == GGUFValueType.STRING:
        (length,) = struct.unpack(order + "Q", _read(handle, 8))
        handle.seek(length, 1)
    elif kind == GGUFValueType.ARRAY:
        item, count = struct.unpack(order + "IQ", _read(handle, 12))
        item = GGUFValueType(item)
        if item in sizes:
            handle.seek(sizes[item] * count, 1)
        else:
            for _ in range(count):
                _skip(handle, item, order, sizes)
    else:
        handle.seek(sizes[kind], 1)
