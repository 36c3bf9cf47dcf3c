"""Tokenized data kept between runs: the examples build_datasets makes, stored with the `datasets` library (Arrow)
under $LORAKIT_CACHE/tokenized/<key> (default ~/.cache/lorakit), and read back instead of tokenizing again.

The key is a SHA-256 over everything the examples depend on: the content of the data (files' SHA-256, `datasets`'
fingerprints), the tokenizer (its full serialized state, special tokens and chat template), every DataConfig
setting, the text of a data.chat_template file, and CACHE_VERSION (bumped when the encoding changes). A change to
any of them is a different key, so a stale entry is never read; entries are written to a temporary folder and
renamed in whole. Without the `datasets` package, or with data.cache_tokenized=false, nothing is cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lorakit.train.chat import load_chat_template

CACHE_VERSION = "2"  # 2: chat rows with a template are labelled by offsets (train/chat_labels.py)
log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("LORAKIT_CACHE") or Path.home() / ".cache" / "lorakit").expanduser() / "tokenized"


def tokenizer_identity(tokenizer: Any) -> str:
    """Everything about a tokenizer that changes its output."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the truncation / padding a previous call left set: not part of the tokenizer
        settings = json.loads(backend.to_str())
        state = json.dumps({k: v for k, v in settings.items() if k not in ("truncation", "padding")}, sort_keys=True)
    else:
        state = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
        "added": sorted((str(k), int(v)) for k, v in tokenizer.get_added_vocab().items()),
    }
    return hashlib.sha256((state + json.dumps(extra, sort_keys=True, default=str)).encode()).hexdigest()


def cache_key(cfg: Any, tokenizer: Any, data_identity: str) -> str:
    settings = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    template = load_chat_template(cfg.chat_template)[0] if cfg.chat_template else ""  # a file's text, not its path
    text = "\n".join([CACHE_VERSION, data_identity, tokenizer_identity(tokenizer), settings, template])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        return None
    datasets.disable_progress_bars()
    return datasets


def enabled(cfg: Any) -> bool:
    return bool(getattr(cfg, "cache_tokenized", True)) and _datasets() is not None


def load(key: str) -> tuple[list[dict], list[dict], dict] | None:
    """(train, validation, stats) stored under `key`, or None."""
    folder = cache_root() / key
    datasets = _datasets()
    if datasets is None or not (folder / "stats.json").is_file():
        return None
    try:
        stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
        parts = [datasets.load_from_disk(str(folder / name)).to_list() if (folder / name).is_dir() else []
                 for name in ("train", "validation")]
    except (OSError, ValueError) as exc:  # a damaged entry is rebuilt, not trusted
        log.warning("ignoring the damaged tokenized-data cache entry %s (%s)", folder, exc)
        return None
    return parts[0], parts[1], stats


def save(key: str, train: list[dict], validation: list[dict], stats: dict) -> None:
    """Store an entry; a failure (full disk, read-only home) only costs the cache, never the run."""
    datasets = _datasets()
    root = cache_root()
    if datasets is None:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        for name, examples in (("train", train), ("validation", validation)):
            if examples:
                datasets.Dataset.from_list(examples).save_to_disk(str(tmp / name))
        (tmp / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
        try:
            os.replace(tmp, root / key)
        except OSError:  # another run stored the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        log.warning("could not write the tokenized-data cache in %s (%s); continuing without it", root, exc)
