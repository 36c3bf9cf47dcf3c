"""`lorakit demo image`: a tiny Stable Diffusion pipeline learns a colour it has never seen, through a LoRA.

    run_image_demo()                                  # what `lorakit demo image` runs
    run_image_demo(["training.max_steps=60"])         # KEY=VALUE overrides of src/lorakit/data/image_demo.yaml

Stages, each printed as it starts and ends:
  1. base      a tiny pipeline (lorakit.diffusion.tiny) pre-trained on red / blue / yellow shapes (pretrain.py);
               cached under $LORAKIT_CACHE/demo-image, so only the first run pays for it
  2. data      green shapes (and a few old-colour ones) as an image folder with .txt captions, <output.dir>/data
  3. train     the LoRA, through `lorakit train`'s own code path (model.task text-to-image), <output.dir>/adapter
  4. compare   the same seeds at LoRA strengths 0, 0.5 and 1 for a new-colour and an old-colour prompt; one
               labelled picture, <output.dir>/grid.png, and the share of green (and red) pixels at each strength

Besides the training config's keys, the demo takes its own (demo.KEY=VALUE): see DemoSettings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from lorakit.demo.image import shapes
from lorakit.demo.image.pretrain import PretrainSettings, pretrained_pipeline
from lorakit.errors import ConfigError
from lorakit.train.config import TrainConfig, load_config

CONFIG_FILE = Path(__file__).resolve().parents[2] / "data" / "image_demo.yaml"
ADAPTER = "green"  # the adapter's name in the pipeline
STRENGTHS = (0.0, 0.5, 1.0)
NEW_PROMPT = "a green circle"
OLD_PROMPT = "a red square"


@dataclass
class DemoSettings:
    new_images: int = 96  # training images in the new colour
    old_images: int = 32  # and in the old colours, captioned as such: the old words keep their meaning
    seeds: int = 4  # images per prompt and strength (the same seeds in every column)
    inference_steps: int = 20  # DDIM steps per image
    # classifier-free guidance scale; 1: none. The LoRA also moves the unconditional branch (it never saw an empty
    # caption), and guidance then pushes the new colour past green into blue at full strength (measured: green
    # share 0% / 66% / 21% at strengths 0 / 0.5 / 1 with guidance 4, against 26% / 64% / 69% without)
    guidance: float = 1.0
    vae_steps: int = PretrainSettings.vae_steps  # pre-training of the base (a change trains a new cached base)
    unet_steps: int = PretrainSettings.unet_steps


def split_overrides(overrides: Sequence[str]) -> tuple[DemoSettings, list[str]]:
    """demo.KEY=VALUE items set DemoSettings; the rest are the training config's."""
    settings, rest = DemoSettings(), []
    kinds = {f.name: f.type for f in fields(DemoSettings)}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key.startswith("demo."):
            rest.append(item)
            continue
        name = key[len("demo."):]
        if not sep or name not in kinds:
            raise ConfigError(f"{item!r}: expected demo.KEY=VALUE with KEY one of {list(kinds)}")
        convert = float if kinds[name] == "float" else int
        try:
            number = convert(value)
        except ValueError:
            raise ConfigError(f"{item!r}: expected a {'number' if convert is float else 'whole number'}") from None
        if number < (0 if name == "old_images" else 1):
            raise ConfigError(f"{item!r}: expected a {'non-negative' if name == 'old_images' else 'positive'} "
                              "number")
        setattr(settings, name, number)
    return settings, rest


def image_config(overrides: Sequence[str] = ()) -> TrainConfig:
    """The image demo's training config with `overrides` applied (a ConfigError for a bad one)."""
    return load_config(None, list(overrides), base=CONFIG_FILE.read_text(encoding="utf-8"))


class Stages:
    """Prints a line as each stage starts and ends, and keeps the seconds each took."""

    def __init__(self, say: Callable[[str], None], total: int) -> None:
        self.say, self.total, self.seconds, self.started = say, total, {}, time.perf_counter()

    def start(self, name: str, what: str) -> None:
        self.name, self.t0 = name, time.perf_counter()
        self.say(f"[{len(self.seconds) + 1}/{self.total} {name}] {what} ...")

    def end(self, note: str = "") -> None:
        took = time.perf_counter() - self.t0
        self.seconds[self.name] = round(took, 1)
        self.say(f"[{len(self.seconds)}/{self.total} {self.name}] done in {took:.0f} s{': ' + note if note else ''}")


def write_training_images(directory: Path, settings: DemoSettings, size: int, seed: int) -> Path:
    """The LoRA's image folder: green shapes, then a few in the old colours."""
    import shutil

    shutil.rmtree(directory, ignore_errors=True)  # a rerun with fewer images leaves no stale ones behind
    pairs = shapes.sample([shapes.NEW_COLOUR], settings.new_images, size, seed + 1)
    if settings.old_images:
        pairs += shapes.sample(shapes.OLD_COLOURS, settings.old_images, size, seed + 2)
    return shapes.write_image_folder(directory, pairs)


def draw_images(pipe, prompt: str, settings: DemoSettings, size: int) -> list[Any]:
    """`settings.seeds` images of `prompt`, image i from seed i whatever the adapter's strength."""
    import torch

    images = []
    for seed in range(settings.seeds):
        generator = torch.Generator().manual_seed(seed)
        images += pipe(prompt, num_inference_steps=settings.inference_steps, guidance_scale=settings.guidance,
                       height=size, width=size, generator=generator).images
    return images


def mean_share(images: Sequence[Any], colour: str) -> float:
    return sum(shapes.colour_shares(image)[colour] for image in images) / len(images)


def compare(pipe_path: Path, adapter_dir: Path, settings: DemoSettings, size: int) -> dict[str, Any]:
    """Images of the new and the old prompt at each strength (same seeds), and their colour shares."""
    from lorakit.diffusion.files import load_pipeline_adapter
    from lorakit.diffusion.weights import set_adapter_weights
    from lorakit.hf.pipelines import load_pipeline

    pipe = load_pipeline(pipe_path)
    pipe.set_progress_bar_config(disable=True)
    load_pipeline_adapter(pipe, adapter_dir, adapter_name=ADAPTER)
    rows, shares = [], {}
    for prompt, colour in ((NEW_PROMPT, shapes.NEW_COLOUR), (OLD_PROMPT, OLD_PROMPT.split()[1])):
        columns = []
        for strength in STRENGTHS:
            set_adapter_weights(pipe, {ADAPTER: strength})
            images = draw_images(pipe, prompt, settings, size)
            columns.append(images)
            shares[(prompt, colour, strength)] = mean_share(images, colour)
        rows.append((prompt, columns))
    return {"rows": rows, "shares": shares}


def summary_line(shares: dict[tuple[str, str, float], float]) -> str:
    parts = []
    for prompt, colour in dict.fromkeys((p, c) for p, c, _ in shares):
        values = ", ".join(f"{shares[(prompt, colour, s)]:.0%}" for s in STRENGTHS)
        parts.append(f"{colour} share of '{prompt}' at strength {'/'.join(f'{s:g}' for s in STRENGTHS)}: {values}")
    return "; ".join(parts)


def run_image_demo(overrides: Sequence[str] = (), say: Callable[[str], None] = print) -> dict[str, Any]:
    """Pre-train (or load) the base, write the data, train the LoRA, compare; a dict of what each stage found."""
    import torch

    from lorakit.demo.image.grid import make_grid, save_grid
    from lorakit.hf.quiet import quiet_transformers
    from lorakit.train.run import train

    settings, train_items = split_overrides(overrides)
    cfg = image_config(train_items)  # every override checked before anything is written
    parent = Path(cfg.output.dir).expanduser().resolve()
    size = cfg.diffusion.resolution
    stages = Stages(say, 4)
    quiet_transformers()
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)

    base_path = cfg.model.path
    if base_path is None:
        pre = replace(PretrainSettings(), seed=cfg.training.seed, image_size=size, vae_steps=settings.vae_steps,
                      unet_steps=settings.unet_steps)
        stages.start("base", f"a tiny Stable Diffusion pipeline, pre-trained on {'/'.join(shapes.OLD_COLOURS)} "
                             f"shapes ({'/'.join(shapes.SHAPES)}; {pre.vae_steps} VAE + {pre.unet_steps} UNet steps)")
        base, cached = pretrained_pipeline(pre, say)
        stages.end(f"{'loaded from the cache' if cached else 'pre-trained'}: {base}")
        base_path = str(base)
    else:
        stages.start("base", f"the pipeline given as model.path: {base_path}")
        stages.end()

    data = parent / "data"
    stages.start("data", f"{settings.new_images} {shapes.NEW_COLOUR} + {settings.old_images} old-colour shapes "
                         f"with captions")
    if cfg.data.path is None:
        write_training_images(data, settings, size, cfg.training.seed)
    else:
        data = Path(cfg.data.path)
    stages.end(str(data))

    adapter_dir = parent / "adapter"
    filled = [*train_items, f"model.path={base_path}", f"data.path={data}", f"output.dir={adapter_dir}"]
    train_cfg = image_config(filled)
    lora, t = train_cfg.lora, train_cfg.training
    stages.start("train", f"LoRA r={lora.r} on the UNet's {lora.target_modules}"
                          f"{' and the text encoder' if train_cfg.diffusion.train_text_encoder else ''}, "
                          f"{t.max_steps} steps of {t.batch_size} images, lr {t.lr:g}")
    result = train(train_cfg)
    stages.end(f"train loss {result.summary['final_train_loss']:.3f}, adapter "
               f"{result.summary.get('adapter_bytes', 0) / 1e6:.2f} MB in {adapter_dir}")

    stages.start("compare", f"'{NEW_PROMPT}' and '{OLD_PROMPT}', {settings.seeds} seeds, strengths "
                            f"{', '.join(f'{s:g}' for s in STRENGTHS)}")
    found = compare(Path(base_path), adapter_dir, settings, size)
    grid = save_grid(make_grid(found["rows"], STRENGTHS), parent / "grid.png")
    line = summary_line(found["shares"])
    stages.end()
    total = time.perf_counter() - stages.started
    say(f"grid: {grid}\n{line}\nlorakit demo image: done in {total:.0f} s")
    return {"grid": str(grid), "adapter_dir": str(adapter_dir), "base": base_path, "data": str(data),
            "shares": {f"{p}|{c}|{s:g}": v for (p, c, s), v in found["shares"].items()},
            "train": result.summary, "seconds": {**stages.seconds, "total": round(total, 1)}}
