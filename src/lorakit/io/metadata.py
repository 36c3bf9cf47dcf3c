"""lorakit's own records about an adapter, kept in the safetensors metadata of adapter_model.safetensors.

PEFT and transformers read adapter_config.json into their config classes and warn about every key they do not
know ("Unexpected keyword arguments ... upgrade PEFT"); neither reads the safetensors metadata. So lorakit's
records live there, as strings (dicts and lists JSON-encoded):
  lorakit_version          the lorakit that wrote the file
  lorakit_fingerprint      the base model the adapter was made for (io/fingerprint.py)
  lorakit_weights_sha256   sha256 of the file minus its metadata: the tensor index (names, dtypes, shapes, offsets;
                           canonical JSON) followed by the tensor bytes. A checksum cannot cover itself, and the
                           metadata holds nothing the tensors' meaning depends on
  lorakit_config_sha256    sha256 of the adapter_config.json bytes written by the same save
  a variant's records      lorakit_<record>, each variant's own (variants/)

Two checksums, two jobs. The weights checksum refuses an edited or truncated weights file on its own. The config
checksum ties the two files of one save together: a save renames the weights in first and the config last
(io/atomic.py), so a save killed between the two renames leaves new weights beside the old config, with the old
weights kept as a hidden backup. The config is then not the one these weights were saved with, the backup's is:
the loader takes the backup (with a warning), and the old adapter loads whole. A config that matches neither was
edited by hand after saving (base_model_name_or_path, say) and is read as it is, as lorakit always allowed.

Files written before this layout kept version, fingerprint and the sha256 of the whole weights file in
adapter_config.json (`lorakit_*` keys); `legacy_weights` still reads and verifies them that way.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save

from lorakit.errors import AdapterFileError
from lorakit.io.atomic import backup_path, recover_backup

WEIGHTS_SHA = "lorakit_weights_sha256"
CONFIG_SHA = "lorakit_config_sha256"
CONFIG_NAME = "adapter_config.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- writing ------------------------------------------------------------------------------------------------------
def encode_weights(tensors: dict[str, torch.Tensor], records: dict[str, Any], config_bytes: bytes) -> bytes:
    """The safetensors bytes of `tensors`, with `records` and both checksums in the metadata."""
    metadata = {"format": "pt", **{k: _encode(v) for k, v in records.items()}, CONFIG_SHA: sha256(config_bytes)}
    draft = safetensors_save(tensors, metadata=metadata)  # the tensor part does not depend on the metadata
    metadata[WEIGHTS_SHA] = tensors_sha256(draft)
    return safetensors_save(tensors, metadata=metadata)


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# -- reading ------------------------------------------------------------------------------------------------------
def split_header(data: bytes, where: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """(tensor index, metadata, offset of the tensor bytes) of safetensors bytes."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if size < 2 or 8 + size > len(data):
            raise ValueError(f"header of {size} bytes in a {len(data)}-byte file")
        header = json.loads(data[8:8 + size])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterFileError(f"{where} is corrupt or truncated ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata if isinstance(metadata, dict) else {}, 8 + size


def tensors_sha256(data: bytes, where: Path = Path("<bytes>")) -> str:
    """sha256 of the canonical tensor index plus the tensor bytes: the whole file except its metadata."""
    index, _, start = split_header(data, where)
    digest = hashlib.sha256(json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
    digest.update(memoryview(data)[start:])
    return digest.hexdigest()


def records(data: bytes, where: Path) -> dict[str, Any]:
    """lorakit's records in the weights' metadata, decoded ({} for a file another tool wrote)."""
    _, metadata, _ = split_header(data, where)
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not key.startswith("lorakit_"):
            continue
        try:
            out[key] = json.loads(value) if value[:1] in ("{", "[") else value
        except (TypeError, json.JSONDecodeError):
            raise AdapterFileError(f"{where}: metadata {key} is not valid JSON") from None
    return out


def checked_weights(weights_path: Path, config_bytes: bytes) -> tuple[bytes, dict[str, Any]]:
    """The weights bytes that go with `config_bytes` and their records, verified (see the module doc)."""
    data = weights_path.read_bytes()
    found = records(data, weights_path)
    if WEIGHTS_SHA not in found:  # written by another tool: nothing to verify
        return data, found
    if tensors_sha256(data, weights_path) != found[WEIGHTS_SHA]:
        raise AdapterFileError(
            f"{weights_path} does not match the checksum in its metadata (edited or truncated file); save the "
            "adapter again"
        )
    if found.get(CONFIG_SHA) in (None, sha256(config_bytes)):
        return data, found
    previous = _backup_for(weights_path, sha256(config_bytes))
    if previous is None:  # the config was edited by hand after the save: read as it is
        return data, found
    warnings.warn(f"{weights_path} is from an interrupted save; loading the previous weights that match {CONFIG_NAME}",
                  stacklevel=4)
    return previous


def _backup_for(weights_path: Path, config_sha: str) -> tuple[bytes, dict[str, Any]] | None:
    """The backup weights an interrupted save left, if they were saved with this config and are intact."""
    backup = backup_path(weights_path)
    if not backup.is_file():
        return None
    data = backup.read_bytes()
    try:
        found = records(data, backup)
        intact = tensors_sha256(data, backup) == found.get(WEIGHTS_SHA)
    except AdapterFileError:
        return None
    return (data, found) if intact and found.get(CONFIG_SHA) == config_sha else None


def legacy_weights(weights_path: Path, expected_sha256: str) -> bytes:
    """An old-layout file: `expected_sha256` (from adapter_config.json) is the sha256 of the whole weights file."""
    data = weights_path.read_bytes() if weights_path.is_file() else b""
    if sha256(data) == expected_sha256:
        return data
    previous = recover_backup(weights_path, expected_sha256)
    if previous is not None:  # a save was killed between its two renames: the old pair is still whole
        warnings.warn(
            f"{weights_path} is from an interrupted save; loading the previous weights that match {CONFIG_NAME}",
            stacklevel=4,
        )
        return previous
    raise AdapterFileError(
        f"{weights_path} does not match the checksum in its {CONFIG_NAME} (edited or truncated file, or files from "
        "two different saves); save the adapter again"
    )
