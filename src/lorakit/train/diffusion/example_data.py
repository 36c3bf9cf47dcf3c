"""A small captioned image folder for trying text-to-image training without data of your own:

    python -m lorakit.train.diffusion.example_data runs/shapes          # 16 images + same-name .txt captions

Coloured shapes (circles and squares in red, green, blue, yellow) on a white background, captioned "a red circle",
... Drawn with PIL, deterministic."""

from __future__ import annotations

import argparse
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 200, 40)}
SHAPES = ("circle", "square")


def write_shapes(folder: str | Path, count: int = 16, size: int = 64) -> Path:
    """`count` images (cycling through colour x shape, each a little smaller than the last) and their captions."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    for i in range(count):
        colour, shape = kinds[i % len(kinds)]
        image = Image.new("RGB", (size, size), (255, 255, 255))
        margin = size // 8 + (i // len(kinds)) * 2
        box = (margin, margin, size - margin, size - margin)
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        image.save(folder / f"shape-{i:03d}.png")
        (folder / f"shape-{i:03d}.txt").write_text(f"a {colour} {shape}\n", encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorakit.train.diffusion.example_data",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args(argv)
    print(f"wrote {args.count} captioned images to {write_shapes(args.directory, args.count)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
