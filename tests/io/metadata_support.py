"""Helpers for tests that edit lorakit's records in adapter_model.safetensors' metadata (io/metadata.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorakit.io.metadata import records

WEIGHTS = "adapter_model.safetensors"


def read_records(directory: Path) -> dict[str, Any]:
    """lorakit's records of a saved adapter, decoded (the fingerprint as a dict)."""
    path = Path(directory) / WEIGHTS
    return records(path.read_bytes(), path)


def rewrite_weights(directory: Path, edit=None, keep_metadata: bool = True, **record_changes: str) -> None:
    """Rewrite the weights file: tensors through edit(dict), the metadata kept (and its records changed, values
    as stored: strings) or dropped (keep_metadata=False: a file as PEFT writes it)."""
    path = Path(directory) / WEIGHTS
    with safe_open(path, "pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_file(path)
    if edit is not None:
        edit(tensors)
    metadata = {**metadata, **record_changes} if keep_metadata else {"format": "pt"}
    save_file(tensors, path, metadata=metadata)
