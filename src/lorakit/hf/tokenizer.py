"""The tokenizer of a local model directory or GGUF file (its tokenizer is in its metadata), with a pad token."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from lorakit.errors import ConfigError
from lorakit.hf.gguf import is_gguf, pretrained_args


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    """`path` is local (a Hub id is resolved to its cached snapshot first: hf/paths.resolve_model_path)."""
    try:
        source, extra = pretrained_args(path) if is_gguf(path) else (str(path), {})
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load a tokenizer from {path} ({exc})") from None
    if tokenizer.pad_token is None:  # causal LMs often have none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer
