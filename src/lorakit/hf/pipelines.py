"""diffusers pipelines: where one is (a local folder with model_index.json, or a Hub id in the HF cache), loading
it, and the components a LoRA adapter goes into.

    pipe = load_pipeline("./tiny-sd")                 # or "org/name" (through lorakit.hf.hub, the shared HF cache)
    lora_components(pipe)  ->  {"unet": ..., "text_encoder": ...}

Component names are the pipeline's attribute names, which are also the key prefixes of diffusers' LoRA files
("unet.", "text_encoder.", "text_encoder_2.", "transformer."). diffusers is imported only inside functions: it is
the optional extra `diffusion`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from lorakit.errors import ConfigError

PIPELINE_INDEX = "model_index.json"
DENOISERS = ("unet", "transformer")  # SD 1.x/2.x/XL have a UNet; SD3 / Flux-style pipelines a transformer
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# what a pipeline needs from its repo: configs, the components' safetensors weights, tokenizer files. Not
# hub.model_snapshot's "*.safetensors": a pipeline repo often also holds whole-model single-file checkpoints at its
# top level (several GB each) that from_pretrained never reads.
PIPELINE_FILES = ["*.json", "*/*.json", "*/*.safetensors", "*/*.txt", "*/*.model"]


def require_diffusers():
    """The diffusers module, or a one-line error naming the extra that installs it."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError("this needs diffusers: pip install 'lorakit[diffusion]'") from None
    return diffusers


def is_pipeline_folder(path: str | Path) -> bool:
    """Is `path` a diffusers pipeline folder (what DiffusionPipeline.save_pretrained writes)?"""
    return (Path(path).expanduser() / PIPELINE_INDEX).is_file()


def resolve_pipeline_path(path: str | Path, revision: str | None = None, what: str = "pipeline") -> Path:
    """The local pipeline folder `path` names: itself, or a Hub id's snapshot in the HF cache."""
    from lorakit.hf import hub

    text = str(path)
    if hub.looks_like_repo_id(text):
        folder = hub.snapshot(text, "model", revision, what, PIPELINE_FILES)
    else:
        if revision:
            raise ConfigError(f"--revision {revision!r} applies to a Hub id; {what} {text!r} is a local path")
        folder = Path(text).expanduser()
    if not folder.exists():
        raise ConfigError(f"{what} {text!r}: no such folder; give a diffusers pipeline folder (with "
                          f"{PIPELINE_INDEX}) or a Hub id (org/name)")
    if not is_pipeline_folder(folder):
        found = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else "a file"
        raise ConfigError(f"{what} {text!r}: not a diffusers pipeline folder (no {PIPELINE_INDEX}; found {found}); "
                          "give the folder DiffusionPipeline.save_pretrained wrote")
    return folder


def load_pipeline(path: str | Path, revision: str | None = None, dtype: str = "auto", device: str = "cpu"):
    """A DiffusionPipeline from a local folder or a Hub id; `dtype` "auto" keeps each component's saved dtype."""
    diffusers = require_diffusers()
    folder = resolve_pipeline_path(path, revision)
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected 'auto' or one of {sorted(DTYPES)}")
    options = {} if dtype == "auto" else {"dtype": DTYPES[dtype]}
    try:
        with quiet():
            pipe = diffusers.DiffusionPipeline.from_pretrained(folder, **options)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"pipeline {str(path)!r}: diffusers could not load it ({first})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@contextmanager
def quiet() -> Iterator[None]:
    """No progress bars or notes ("no safety checker", casting advice) from diffusers and transformers while a
    pipeline loads, moves or saves; their settings are put back after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
             for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


def denoiser_name(pipe) -> str:
    """The attribute holding the denoiser: "unet" or "transformer"."""
    for name in DENOISERS:
        if isinstance(getattr(pipe, name, None), nn.Module):
            return name
    raise ConfigError(f"{type(pipe).__name__} has neither a unet nor a transformer; lorakit adapts those pipelines")


def lora_components(pipe) -> dict[str, nn.Module]:
    """The components a LoRA adapter may go into, by attribute name: the denoiser, then the text encoders present."""
    components = {denoiser_name(pipe): getattr(pipe, denoiser_name(pipe))}
    for name in TEXT_ENCODERS:
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module):
            components[name] = module
    return components
