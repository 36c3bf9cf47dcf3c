"""The demo's one picture: rows are prompts, columns are LoRA strengths (base = 0), each cell a strip of the same
seeds' images, labelled, pixels enlarged without smoothing so the small images stay sharp."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

ZOOM = 3  # each generated pixel drawn as ZOOM x ZOOM
GAP = 6
LABEL_WIDTH = 150
HEADER = 22
WHITE, INK, PAPER = (255, 255, 255), (20, 20, 20), (225, 225, 225)


def column_title(strength: float) -> str:
    return "base (LoRA 0)" if strength == 0 else f"LoRA {strength:g}"


def make_grid(rows: Sequence[tuple[str, Sequence[Sequence[object]]]], strengths: Sequence[float]):
    """rows: (prompt, one list of images per strength); every image the same size. Returns a PIL image."""
    from PIL import Image, ImageDraw

    first = rows[0][1][0][0]
    cell = first.width * ZOOM
    per_cell = max(len(images) for _, columns in rows for images in columns)
    strip = per_cell * cell
    width = LABEL_WIDTH + len(strengths) * (strip + GAP)
    height = HEADER + len(rows) * (cell + GAP)
    canvas = Image.new("RGB", (width, height), WHITE)
    pen = ImageDraw.Draw(canvas)
    for c, strength in enumerate(strengths):
        pen.text((LABEL_WIDTH + c * (strip + GAP) + 4, 5), column_title(strength), fill=INK)
    for r, (prompt, columns) in enumerate(rows):
        top = HEADER + r * (cell + GAP)
        pen.text((6, top + cell // 2 - 6), prompt, fill=INK)
        for c, images in enumerate(columns):
            left = LABEL_WIDTH + c * (strip + GAP)
            pen.rectangle((left - 1, top - 1, left + strip, top + cell), outline=PAPER)
            for i, image in enumerate(images):
                big = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
                canvas.paste(big, (left + i * cell, top))
    return canvas


def save_grid(canvas, path: Path) -> Path:
    """Written aside and renamed in (lorakit.diffusion.png): a crash never leaves half a PNG."""
    from lorakit.diffusion.png import write_png

    return write_png(path, canvas)
