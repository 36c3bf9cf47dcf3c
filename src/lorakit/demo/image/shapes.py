"""The demo's generated pictures: one coloured shape on a plain background, and its caption ("a red circle").

Pre-training sees only the OLD colours (red, blue, yellow); the LoRA then teaches the NEW one (green), a colour
the base model has never been shown. `colour_shares` measures, from the pixels, how much of a picture's shape is
each colour: the number the demo prints to show the effect.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

BACKGROUND = (245, 245, 240)
COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "yellow": (235, 200, 30), "green": (30, 170, 60)}
OLD_COLOURS = ("red", "blue", "yellow")
NEW_COLOUR = "green"
SHAPES = ("circle", "square", "cross")
WORDS = (*COLOURS, *SHAPES)  # the tokenizer's vocabulary beyond its common words
SUPERSAMPLE = 4  # drawn 4x larger and shrunk: smooth edges


def caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def draw(colour: str, shape: str, size: int, rng: random.Random):
    """One `size` x `size` RGB picture: the shape at a random place and size, fully inside the frame."""
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    pen = ImageDraw.Draw(image)
    half = rng.uniform(0.2, 0.36) * big  # half the shape's width
    cx, cy = (rng.uniform(half + 1, big - half - 1) for _ in range(2))
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "cross":
        arm = half / 2.6
        pen.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
        pen.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return image.resize((size, size), Image.Resampling.LANCZOS)


def sample(colours: Sequence[str], count: int, size: int, seed: int) -> list[tuple[object, str]]:
    """`count` (picture, caption) pairs, colours and shapes drawn evenly at random."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        colour, shape = rng.choice(list(colours)), rng.choice(SHAPES)
        pairs.append((draw(colour, shape, size, rng), caption(colour, shape)))
    return pairs


def write_image_folder(directory: Path, pairs: Sequence[tuple[object, str]]) -> Path:
    """An image folder as `lorakit train` reads it for text-to-image: 0000.png beside 0000.txt (the caption)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, (image, text) in enumerate(pairs):
        image.save(directory / f"{i:04d}.png")
        (directory / f"{i:04d}.txt").write_text(text + "\n", encoding="utf-8")
    return directory


def colour_shares(image) -> dict[str, float]:
    """Of the pixels that are not background, the share nearest to each named colour (a hard vote per pixel).
    A picture with no shape at all gives zeros."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    shape = np.abs(pixels - np.array(BACKGROUND, dtype=np.float32)).sum(axis=1) > 120
    if not shape.any():
        return dict.fromkeys(COLOURS, 0.0)
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)  # (colours, 3)
    nearest = np.linalg.norm(pixels[shape][:, None, :] - palette[None], axis=2).argmin(axis=1)
    return {name: float((nearest == i).mean()) for i, name in enumerate(names)}
