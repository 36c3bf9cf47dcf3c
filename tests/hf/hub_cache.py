"""Fill a Hugging Face cache folder exactly as the Hub client lays it out, so Hub-id code paths run offline.

    <cache>/models--org--name/
        blobs/<sha256 of the file>                       the content, once
        refs/main                                        the commit a branch or tag points at
        snapshots/<commit>/<path in the repo>            symlinks to ../../blobs/<sha256>
Datasets use datasets--org--name. huggingface_hub's own scan_cache_dir must accept what this writes (tested).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

KINDS = {"model": "models", "dataset": "datasets"}


def repo_folder(cache: Path, repo_id: str, kind: str = "model") -> Path:
    return Path(cache) / f"{KINDS[kind]}--{repo_id.replace('/', '--')}"


def add_snapshot(cache: Path, repo_id: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",),
                 kind: str = "model") -> Path:
    """Put every file under `source` into the cache as `repo_id` at `commit` (40 hex digits), with `refs`
    pointing at it. Returns the snapshot folder."""
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit), commit
    repo = repo_folder(cache, repo_id, kind)
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        ref_file = repo / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    return snapshot


def commit_id(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()
