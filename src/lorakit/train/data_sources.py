"""Where a run's rows come from: local data files (data_files.py) or a Hugging Face dataset (hf_datasets.py), for
each role (train, validation, test), with an identity of their content for the tokenized-data cache.

    sources = open_sources(cfg)                   # checks that everything named exists; reads no rows yet
    sources.rows("train", bad)                    # [Row, ...]; validation / test: [] when the run has none
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.train import hf_datasets
from lorakit.train.data_files import BadRows, DataError, Row, read_rows

ROLES = ("train", "validation", "test")
CHUNK = 1 << 20


@dataclass
class Sources:
    name: str  # what error messages call the training data: the train file, or data.path
    files: dict[str, str | None]  # role -> local data file (None: none, or from the dataset)
    splits: dict[str, str | None] = field(default_factory=dict)  # role -> split of data.path (None: none)
    datasets: dict[str, Any] = field(default_factory=dict)  # split name -> datasets.Dataset
    config: Any = None

    def rows(self, role: str, bad: BadRows) -> list[Row]:
        if self.files.get(role):
            return read_rows(self.files[role], bad)
        spec = self.splits.get(role)
        if spec is None:
            return []
        setting = {"train": "train_split", "validation": "validation_name", "test": "test_name"}[role]
        return hf_datasets.split_rows(self.config, self.datasets, spec, setting)

    def identity(self) -> str:
        """The content of every source the run reads: SHA-256 of each file, `datasets`' fingerprints."""
        parts = [f"{role}:file:{file_sha256(Path(file))}" for role, file in sorted(self.files.items()) if file]
        parts += [f"{role}:split:{spec}" for role, spec in sorted(self.splits.items()) if spec]
        if self.datasets:
            parts.append(hf_datasets.fingerprint(self.datasets))
        return ";".join(parts)


def open_sources(cfg: Any) -> Sources:
    """The sources DataConfig `cfg` names (files win over data.path's splits for validation and test)."""
    if cfg.path is None:
        if cfg.train_file is None:
            raise DataError("data.train_file is not set: name a JSON / JSONL / CSV / TSV / Parquet file, or set "
                            "data.path (a Hub dataset id or a datasets folder)")
        return Sources(cfg.train_file, {"train": cfg.train_file, "validation": cfg.validation_file,
                                        "test": cfg.test_file})
    datasets = hf_datasets.load_splits(cfg)
    validation = None
    if cfg.validation_file is None and not cfg.validation_split:
        validation = hf_datasets.validation_split_name(cfg, datasets)
    splits = {"train": cfg.train_split, "validation": validation, "test": None if cfg.test_file else cfg.test_name}
    files = {"train": None, "validation": cfg.validation_file, "test": cfg.test_file}
    return Sources(cfg.path, files, splits, datasets, cfg)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    except OSError:
        return "unreadable"  # the reader reports it with its own message
    return digest.hexdigest()
