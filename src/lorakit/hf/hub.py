"""Models, adapters and datasets named by a Hugging Face Hub id ("org/name"), found in the standard HF cache.

    snapshot("HuggingFaceTB/SmolLM2-135M", kind="model")  -> <cache>/models--HuggingFaceTB--SmolLM2-135M/snapshots/<sha>

Everything goes through huggingface_hub's snapshot_download, so the cache is the one transformers, datasets and the
`hf` CLI share, in the Hub client's layout (models--org--name/{blobs,refs,snapshots}). The environment is read at
call time, not at import (huggingface_hub reads it once, when first imported):
  HF_HUB_OFFLINE=1   never touch the network: the cache or a one-line error saying how to fill it
  HF_HUB_CACHE       the cache folder; else $HF_HOME/hub; else $XDG_CACHE_HOME/huggingface/hub; else ~/.cache/...
  HF_ENDPOINT        the Hub's address (a mirror)
Online with no network, snapshot_download itself falls back to what the cache holds for the revision.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lorakit.errors import ConfigError

# org/name, or a bare legacy name such as "gpt2"; the Hub's own rule: letters, digits, '-', '_', '.'
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")
TRUE_WORDS = ("1", "true", "yes", "on")
# what a model needs from its repo: config, weights, tokenizer, chat template, remote code; never other frameworks'
# weights (TF, Flax, ONNX, GGUF) that a repo may also hold
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py", "*.index.json"]
PICKLE_WEIGHTS = ["pytorch_model*.bin"]  # fetched only when the snapshot has no safetensors


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_WORDS


def cache_dir() -> Path:
    """The Hub cache folder, as huggingface_hub would choose it from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "huggingface" / "hub"


def looks_like_repo_id(value: str) -> bool:
    """A string that can only be a Hub id: not an existing path, no path syntax, the Hub's characters."""
    text = str(value)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or "\\" in text or "//" in text:
        return False
    return REPO_ID.fullmatch(text) is not None and not text.endswith((".gguf", ".json", ".safetensors"))


def split_revision(value: str) -> tuple[str, str | None]:
    """"org/name@v1.0" -> ("org/name", "v1.0"); the @revision form names adapters on the command line."""
    repo, sep, revision = str(value).partition("@")
    return (repo, revision or None) if sep else (repo, None)


def snapshot(repo_id: str, kind: str = "model", revision: str | None = None, what: str = "model.path",
             patterns: list[str] | None = None) -> Path:
    """The local folder of `repo_id` at `revision` (default: main) in the HF cache, downloading it when online."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ConfigError(f"{what}={repo_id!r} is a Hub id, which needs huggingface_hub (pip install "
                          "huggingface_hub); or give a local folder") from None
    named = f"{what}={repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    where, offline = cache_dir(), is_offline()
    try:
        folder = snapshot_download(repo_id, repo_type=None if kind == "model" else kind, revision=revision,
                                   cache_dir=where, local_files_only=offline, allow_patterns=patterns,
                                   endpoint=os.environ.get("HF_ENDPOINT") or None)
    except LocalEntryNotFoundError:
        reason = "HF_HUB_OFFLINE=1" if offline else "the Hub could not be reached"
        raise ConfigError(
            f"{named}: no local folder of that name, and not in the Hugging Face cache {where} ({reason}); "
            "download it once where the Hub "
            f"is reachable (hf download {repo_id}{' --repo-type ' + kind if kind != 'model' else ''}) into this "
            "cache (HF_HOME / HF_HUB_CACHE), or give a local folder"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ConfigError(f"{named}: the Hub refused it ({type(exc).__name__}); check the id, and log in "
                          "(hf auth login / HF_TOKEN) for private or gated repos") from None
    except RevisionNotFoundError:
        raise ConfigError(f"{named}: no such revision on the Hub; check the branch, tag or commit") from None
    except HFValidationError:
        raise ConfigError(f"{named}: not a local path, and not a valid Hub id (org/name)") from None
    return Path(folder)


def model_snapshot(repo_id: str, revision: str | None = None, what: str = "model.path") -> Path:
    """A model repo's config, safetensors weights and tokenizer (pickle weights only when there are no others)."""
    folder = snapshot(repo_id, "model", revision, what, MODEL_FILES)
    weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    if not weights and not is_offline():
        folder = snapshot(repo_id, "model", revision, what, MODEL_FILES + PICKLE_WEIGHTS)
    return folder


ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "*/adapter_config.json",
                 "*/adapter_model.safetensors", "train_config.yaml", "README.md"]


def local_adapter(source: str | os.PathLike) -> Path:
    """An adapter's local folder: `source` itself when it exists, else the Hub id `org/name[@revision]`'s snapshot
    (adapter files only)."""
    path = Path(source).expanduser()
    repo, revision = split_revision(str(source))
    if path.exists() or not looks_like_repo_id(repo):
        return path
    return snapshot(repo, "model", revision, what="adapter", patterns=ADAPTER_FILES)
