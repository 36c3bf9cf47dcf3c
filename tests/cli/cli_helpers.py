"""Helpers shared by the CLI tests: a saved adapter on a tiny base, the one-line error check, a full disk."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import lorakit

IDS = torch.tensor([[5, 9, 17, 33, 2, 40]])


def adapter_on(base, path, poison: bool = False):
    """Save a random adapter for the model in `base`; returns the adapter model's logits on IDS."""
    model = AutoModelForCausalLM.from_pretrained(base)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    if poison:
        with torch.no_grad():
            model.get_submodule("model.layers.1.self_attn.v_proj").lora_B["default"].weight[0, 0] = float("nan")
    lorakit.save_adapter(model, path)
    with torch.no_grad():
        return model(IDS).logits


def merged_logits(out):
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(out)(IDS).logits


def one_error_line(capsys, command: str = "merge") -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lorakit {command}: error: "), err
    assert "Traceback" not in err
    return err


class _FullDisk:
    """A file on a full disk: the first write stores half its bytes, then fails with ENOSPC."""

    def __init__(self, handle, path: str) -> None:
        self._handle, self._path = handle, path

    def write(self, data) -> int:
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device", self._path)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


def disk_full_under(monkeypatch, folder: Path) -> None:
    """Every file opened for writing under `folder` (by name or by descriptor, as os.fdopen does) is on a full disk.

    Python-level writes only (matplotlib, PIL, lorakit.io.atomic); safetensors writes from Rust."""
    real_open = io.open
    folder = Path(folder).resolve()

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.fspath(file)
        if any(c in mode for c in "wax+") and Path(path).resolve().is_relative_to(folder):
            return _FullDisk(handle, str(path))
        return handle

    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr("builtins.open", open_)
