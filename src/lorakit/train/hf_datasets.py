"""data.path: a Hugging Face dataset, read through the `datasets` library, as rows for the formats in data_formats.py.

    data.path: stanfordnlp/imdb          a Hub id: its snapshot in the HF cache (hf/hub.py), then load_dataset on it
    data.path: ./my-dataset              a folder written by Dataset(Dict).save_to_disk: load_from_disk (memory-mapped)
    data.path: ./my-data-folder          a folder of data files (train.jsonl, validation.csv, data/train-*.parquet...)

Splits are chosen by name (data.train_split, validation_name, test_name); a split may be sliced as datasets writes it,
"train[:1000]" or "train[1000:2000]". Rows remember where they came from ("<path>[train] row 17") so every data error
still names its row. Local data FILES keep lorakit's own readers (data_files.py: `path:line` errors).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError
from lorakit.hf import hub
from lorakit.train.data_files import DataError, Row

SLICE = re.compile(r"(?P<name>[\w.-]+)(\[(?P<start>\d*):(?P<stop>\d*)\])?")
VALIDATION_NAMES = ("validation", "valid", "dev", "val")  # what validation_name="auto" looks for, in order


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.path names a Hugging Face dataset, which needs the datasets library: pip install "
                          "'lorakit[datasets]' (or point data.train_file at a JSON / JSONL / CSV / Parquet file)"
                          ) from None
    datasets.disable_progress_bars()  # one line per step of ours, not a bar per shard
    return datasets


def is_data_file(path: str) -> bool:
    """A single local data file (read by data_files.py, not by `datasets`)."""
    return Path(path).expanduser().is_file()


def load_splits(cfg: Any) -> dict[str, Any]:
    """{split name: datasets.Dataset} of data.path."""
    datasets = _datasets()
    source = cfg.path
    folder = Path(source).expanduser()
    try:
        if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(folder))
        else:
            if not folder.is_dir():
                if not hub.looks_like_repo_id(source):
                    raise ConfigError(f"data.path={source!r}: no such file or folder, and not a Hub dataset id "
                                      "(org/name)")
                folder = hub.snapshot(source, "dataset", cfg.revision, what="data.path")
            loaded = datasets.load_dataset(str(folder), name=cfg.subset)
    except (ValueError, FileNotFoundError) as exc:  # datasets' own errors: no data files, unknown config name...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"data.path={source!r}: datasets could not load it ({first})") from None
    if isinstance(loaded, datasets.Dataset):  # save_to_disk of one Dataset: it is the train split
        return {"train": loaded}
    return dict(loaded)


def split_rows(cfg: Any, splits: dict[str, Any], spec: str, setting: str) -> list[Row]:
    """The rows of split `spec` ("train", "train[:100]"), named for errors as "<path>[<spec>] row N"."""
    match = SLICE.fullmatch(spec.strip())
    if match is None:
        raise ConfigError(f"data.{setting}={spec!r}: expected a split name, optionally sliced: train, train[:1000]")
    name = match["name"]
    if name not in splits:
        raise ConfigError(f"data.{setting}={spec!r}: data.path={cfg.path!r} has the splits {sorted(splits)}")
    dataset = splits[name]
    if match["start"] or match["stop"]:
        start, stop = int(match["start"] or 0), min(int(match["stop"] or len(dataset)), len(dataset))
        dataset = dataset.select(range(start, max(start, stop)))
    rows = [Row(f"{cfg.path}[{spec}] row {i}", dict(record)) for i, record in enumerate(dataset, start=1)]
    if not rows:
        raise DataError(f"{cfg.path}[{spec}]: the split holds no rows")
    return rows


def validation_split_name(cfg: Any, splits: dict[str, Any]) -> str | None:
    """The split validation_name picks: "auto" is the first of VALIDATION_NAMES the dataset has (else none)."""
    if cfg.validation_name != "auto":
        return cfg.validation_name
    return next((name for name in VALIDATION_NAMES if name in splits), None)


def fingerprint(splits: dict[str, Any]) -> str:
    """What identifies the data `datasets` loaded (its own fingerprints, from the files' content and the slicing)."""
    return ",".join(f"{name}:{splits[name]._fingerprint}" for name in sorted(splits))
