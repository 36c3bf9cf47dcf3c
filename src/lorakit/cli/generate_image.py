"""`lorakit generate` for a diffusers pipeline: prompt -> PNG, with any number of LoRA adapters at their weights.

`lorakit generate` hands over here when BASE is a pipeline folder (model_index.json), a Hub id whose cached
snapshot is one, or with --pipeline. Each --adapter is SRC[:WEIGHT] (a diffusers, kohya or PEFT-layout adapter
file or folder, or a Hub id); --scale multiplies every weight. Seeded: the same command writes the same bytes.

examples:
  lorakit generate ./tiny-sd --prompt "a red circle" --out circle.png
  lorakit generate ./sd15 --adapter style.safetensors:0.8 --adapter runs/dog --prompt "sks dog" --num-images 4
  lorakit generate ./sd15 --adapter style.safetensors --compare --prompt "a house"   # base and adapter, one PNG
"""

from __future__ import annotations

import argparse
import math
import re
from contextlib import ExitStack
from pathlib import Path

from lorakit.errors import ConfigError

SIZE = re.compile(r"(\d+)x(\d+)")
DEFAULT_OUT = "lorakit-image.png"
TEXT_ONLY = ("chat", "alpaca")  # flags of text generation that mean nothing for an image


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of image generation, in their own group of `lorakit generate`'s help."""
    group = parser.add_argument_group("image generation (BASE is a diffusers pipeline)")
    group.add_argument("--pipeline", action="store_true",
                       help="BASE is a diffusers pipeline (found by itself for a folder with model_index.json)")
    group.add_argument("--scale", type=float, help="multiply every adapter's weight (default 1)")
    group.add_argument("--steps", type=int, help="denoising steps (default 30)")
    group.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the pipeline's)")
    group.add_argument("--negative-prompt", help="what the image should not show")
    group.add_argument("--size", help="HEIGHTxWIDTH in pixels, multiples of 8 (default: the pipeline's)")
    group.add_argument("--num-images", type=int, help="images per prompt (default 1)")
    group.add_argument("--out", help=f"PNG to write (default {DEFAULT_OUT}); several images: <stem>-<n>.png")


IMAGE_OPTIONS = ("scale", "steps", "guidance", "negative_prompt", "size", "num_images", "out")


def wants_pipeline(args: argparse.Namespace) -> bool:
    """Is BASE a diffusers pipeline: --pipeline, a folder with model_index.json, or a Hub id cached as one."""
    from lorakit.hf.hub import looks_like_repo_id
    from lorakit.hf.pipelines import PIPELINE_INDEX, is_pipeline_folder

    if args.pipeline or is_pipeline_folder(args.base):
        return True
    if looks_like_repo_id(args.base):
        from huggingface_hub import try_to_load_from_cache

        from lorakit.hf.hub import cache_dir

        found = try_to_load_from_cache(args.base, PIPELINE_INDEX, cache_dir=cache_dir(), revision=args.revision)
        return isinstance(found, str)
    return False


def refuse_image_options(args: argparse.Namespace) -> None:
    """For a text model: image options are a mistake (the user meant a pipeline, or mistyped BASE)."""
    from lorakit.hf.hub import looks_like_repo_id

    given = [name for name in IMAGE_OPTIONS if getattr(args, name, None) is not None]
    if given:
        option = "--" + given[0].replace("_", "-")
        missing = not Path(args.base).expanduser().exists() and not looks_like_repo_id(args.base)
        what = "no such file or folder" if missing else "not a diffusers pipeline folder: no model_index.json"
        raise ConfigError(f"{option} applies to image generation, and {args.base} is {what}; give a pipeline folder "
                          "(or --pipeline with a pipeline's Hub id)")


def parse_adapter(text: str, scale: float) -> tuple[str, float]:
    """"SRC:WEIGHT" -> (SRC, WEIGHT * scale); a SRC without a numeric ':WEIGHT' suffix has weight `scale`."""
    source, sep, weight = text.rpartition(":")
    if sep and source:
        try:
            value = float(weight)
        except ValueError:
            return text, scale
        if not math.isfinite(value):
            raise ConfigError(f"--adapter {text!r}: the weight {weight!r} is not a finite number")
        return source, value * scale
    return text, scale


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = SIZE.fullmatch(text.strip().lower())
    if not match or int(match[1]) <= 0 or int(match[2]) <= 0 or int(match[1]) % 8 or int(match[2]) % 8:
        raise ConfigError(f"--size {text!r}: expected HEIGHTxWIDTH in pixels, multiples of 8 (e.g. 512x512)")
    return int(match[1]), int(match[2])


def check(args: argparse.Namespace) -> tuple[tuple[int, int] | None, list[tuple[str, float]]]:
    """Every user input checked before the pipeline loads; returns (size, [(adapter source, weight)])."""
    flags = [f"--{name}" for name in TEXT_ONLY if getattr(args, name, False)]
    if flags:
        raise ConfigError(f"{flags[0]} applies to text generation; {args.base} is a diffusers pipeline")
    for option in ("steps", "num_images"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise ConfigError(f"--{option.replace('_', '-')} {value}: expected a number > 0")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise ConfigError(f"--guidance {args.guidance}: expected a number >= 0")
    scale = 1.0 if args.scale is None else args.scale
    if not math.isfinite(scale):
        raise ConfigError(f"--scale {args.scale}: expected a finite number")
    adapters = [parse_adapter(text, scale) for text in args.adapters or []]
    if args.compare and not adapters:
        raise ConfigError("--compare needs --adapter (it shows the base and the adapted images side by side)")
    out = Path(args.out or DEFAULT_OUT)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: expected a .png file name")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a .png file")
    return parse_size(args.size), adapters


def adapter_path(source: str) -> Path:
    """A local adapter file or folder, or a Hub id's snapshot (adapter files only) in the HF cache."""
    from lorakit.hf import hub

    path = Path(source).expanduser()
    repo, revision = hub.split_revision(source)
    if path.exists() or not hub.looks_like_repo_id(repo):
        if not path.exists():
            raise ConfigError(f"--adapter {source!r}: no such file or folder, and not a Hub id (org/name)")
        return path
    return hub.snapshot(repo, "model", revision, what="--adapter", patterns=["*.safetensors", "*.json"])


def load_adapters(pipe, adapters: list[tuple[str, float]]) -> dict[str, float]:
    """Load each adapter under its own name; returns {name: weight}."""
    from lorakit.diffusion.files import load_pipeline_adapter
    from lorakit.diffusion.weights import set_adapter_weights

    weights: dict[str, float] = {}
    for index, (source, weight) in enumerate(adapters):
        name = f"adapter{index}"
        load_pipeline_adapter(pipe, adapter_path(source), adapter_name=name)
        weights[name] = weight
    if weights:
        set_adapter_weights(pipe, weights)
    return weights


def render(pipe, prompt: str, args: argparse.Namespace, size: tuple[int, int] | None) -> list:
    """The PIL images of one prompt, from a generator seeded with --seed (the same for base and adapter)."""
    import torch

    options = {"num_inference_steps": args.steps or 30, "num_images_per_prompt": args.num_images or 1,
               "output_type": "pil", "generator": torch.Generator(device="cpu").manual_seed(args.seed)}
    if args.negative_prompt is not None:  # passed only when given: not every pipeline takes one
        options["negative_prompt"] = args.negative_prompt
    if args.guidance is not None:
        options["guidance_scale"] = args.guidance
    if size is not None:
        options["height"], options["width"] = size
    try:
        with torch.no_grad():
            return list(pipe(prompt, **options).images)
    except ValueError as exc:  # diffusers' own input checks (a size its VAE / UNet cannot take, ...)
        raise ConfigError(f"the pipeline refused the request: {str(exc).strip().splitlines()[0]}") from None


def base_images(pipe, prompt: str, args: argparse.Namespace, size: tuple[int, int] | None) -> list:
    import lorakit
    from lorakit.adapter_state import adapter_configs
    from lorakit.hf.pipelines import lora_components

    with ExitStack() as stack:
        for module in lora_components(pipe).values():
            if adapter_configs(module):
                stack.enter_context(lorakit.disable_adapters(module))
        return render(pipe, prompt, args, size)


def output_paths(out: Path, count: int) -> list[Path]:
    return [out] if count == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    from lorakit.diffusion.png import captioned_rows, write_png
    from lorakit.hf.pipelines import load_pipeline

    size, adapters = check(args)
    pipe = load_pipeline(args.base, revision=args.revision)
    weights = load_adapters(pipe, adapters)
    pictures = []
    for prompt in args.prompt:
        images = render(pipe, prompt, args, size)
        if args.compare:
            label = "adapter " + " ".join(f"x{w:g}" for w in weights.values())
            pictures.append(captioned_rows([("base", base_images(pipe, prompt, args, size)), (label, images)]))
        else:
            pictures.extend(images)
    written = [write_png(path, picture) for path, picture in
               zip(output_paths(Path(args.out or DEFAULT_OUT), len(pictures)), pictures, strict=True)]
    for path in written:
        print(path)
    return 0
