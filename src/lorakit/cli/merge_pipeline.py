"""`lorakit merge` for a diffusion adapter: fuse it into its pipeline and write a plain pipeline folder that
`DiffusionPipeline.from_pretrained(OUT)` loads with no lorakit and no LoRA layers.

`lorakit merge` hands over here when --base names a pipeline, when BASE is a pipeline folder (model_index.json),
or when the adapter is a pipeline adapter (a diffusers or kohya .safetensors file, or a folder holding one) and
no BASE is given. The pipeline is --base, else the one the adapter's training run used (its train_config.yaml
model.path, or the file's `lorakit_base_model` record). --scale is the LoRA's weight (strength) fused in.

examples:
  lorakit merge runs/dog ./sd15-dog --base ./sd15
  lorakit merge style.safetensors ./sd15-style --base ./sd15 --scale 0.8
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lorakit.errors import ConfigError

PIPELINE_ADAPTER_FILES = ("pytorch_lora_weights.safetensors",)
BASE_RECORD = "lorakit_base_model"  # the file metadata key naming the pipeline an adapter was trained on
DTYPES = ("float32", "bfloat16", "float16")


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("diffusion adapters (the base is a diffusers pipeline)")
    group.add_argument("--base", dest="pipeline_base", metavar="PIPELINE",
                       help="the pipeline folder (model_index.json) or Hub id the adapter was trained on")
    group.add_argument("--scale", type=float, help="the adapter's weight (strength) to fuse in (default 1)")


def is_pipeline_adapter(path: Path) -> bool:
    """A diffusers / kohya adapter file, or a folder holding one and no PEFT adapter_config.json."""
    if path.is_file():
        return path.suffix == ".safetensors"
    if not path.is_dir() or (path / "adapter_config.json").is_file():
        return False
    return any((path / name).is_file() for name in PIPELINE_ADAPTER_FILES) or any(path.glob("*.safetensors"))


def wants_pipeline(args: argparse.Namespace) -> bool:
    from lorakit.hf.pipelines import is_pipeline_folder

    if args.pipeline_base is not None or (args.base is not None and is_pipeline_folder(args.base)):
        return True
    return args.base is None and is_pipeline_adapter(Path(args.adapter).expanduser())


def refuse_pipeline_options(args: argparse.Namespace) -> None:
    if args.scale is not None:
        raise ConfigError(f"--scale applies to diffusion adapters; {args.adapter} is a PEFT adapter of a "
                          "transformers model (scale it with lorakit combine)")


def pipeline_for(adapter: Path, args: argparse.Namespace) -> str:
    """--base (or BASE), else the pipeline the adapter records, else a one-line error asking for --base."""
    if args.pipeline_base is not None and args.base is not None:
        raise ConfigError("give the pipeline once: BASE or --base, not both")
    given = args.pipeline_base or args.base
    if given is not None:
        return given
    recorded = recorded_pipeline(adapter)
    if recorded is None:
        raise ConfigError(f"cannot tell which pipeline {adapter} was trained on (no train_config.yaml beside it, no "
                          f"{BASE_RECORD} in its file); pass it: lorakit merge {adapter} OUT --base PIPELINE")
    return recorded


def recorded_pipeline(adapter: Path) -> str | None:
    folder = adapter if adapter.is_dir() else adapter.parent
    run_file = folder / "train_config.yaml"
    if run_file.is_file():
        import yaml

        model = (yaml.safe_load(run_file.read_text(encoding="utf-8")) or {}).get("model") or {}
        if model.get("path"):
            return str(model["path"])
    files = [adapter] if adapter.is_file() else sorted(adapter.glob("*.safetensors"))
    for file in files:
        from safetensors import safe_open

        try:
            with safe_open(str(file), "pt") as handle:
                value = (handle.metadata() or {}).get(BASE_RECORD)
        except Exception:  # not a safetensors file: the reader reports it properly later
            continue
        if value:
            return value
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from lorakit.cli.generate_image import adapter_path
    from lorakit.cli.output_dir import check_output
    from lorakit.diffusion.files import load_pipeline_adapter
    from lorakit.diffusion.weights import fuse_adapters, save_plain_pipeline
    from lorakit.hf.pipelines import load_pipeline, quiet, resolve_pipeline_path

    scale = 1.0 if args.scale is None else args.scale
    if not math.isfinite(scale):
        raise ConfigError(f"--scale {args.scale}: expected a finite number")
    if args.dtype not in DTYPES:
        raise ConfigError(f"--dtype {args.dtype}: expected one of {list(DTYPES)}")
    out, adapter = Path(args.out), adapter_path(args.adapter)
    base = pipeline_for(adapter, args)
    folder = resolve_pipeline_path(base, what="--base")
    check_output(out, args.overwrite, {"the adapter": adapter, "the pipeline": folder})
    pipe = load_pipeline(folder)
    load_pipeline_adapter(pipe, adapter, adapter_name="default")
    fuse_adapters(pipe, {"default": scale}, safe_merge=args.safe_merge)
    with quiet():  # diffusers' notes on casting are about training in that dtype, not about a saved copy
        pipe.to(getattr(torch, args.dtype))
    save_plain_pipeline(pipe, out, overwrite=args.overwrite)
    print(f"lorakit merge: wrote {out} ({type(pipe).__name__}, adapter fused at weight {scale:g}, {args.dtype}); "
          f"load it with diffusers' DiffusionPipeline.from_pretrained({str(out)!r})")
    return 0
