"""Pictures to files: PNG bytes, captioned rows of images side by side, and the crash-safe write.

A PNG written here holds only the pixels (no time stamp, no text chunks), so the same image gives the same bytes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from lorakit.io.atomic import replace_files

CAPTION_HEIGHT = 14  # pixels of the strip above each row; PIL's built-in font is about 11 pixels tall
GAP = 2  # pixels between images
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | Path, image) -> Path:
    """Write `image` to `path` as a PNG: a temporary file renamed into place (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_files(path.parent, {path.name: png_bytes(image)})
    umask = os.umask(0)  # the temporary file was private (0600); an image gets a new file's usual permissions
    os.umask(umask)
    path.chmod(0o666 & ~umask)
    return path


def captioned_rows(rows: list[tuple[str, list]]):
    """One picture: for each (caption, images) a strip with the caption, then the images left to right."""
    from PIL import Image, ImageDraw

    widest_row = max(sum(im.width for im in images) + GAP * (len(images) - 1) for _, images in rows)
    pen_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest_caption = max(int(pen_probe.textlength(caption)) + 2 * GAP for caption, _ in rows)
    width = max(widest_row, widest_caption)
    height = sum(CAPTION_HEIGHT + max(im.height for im in images) + GAP for _, images in rows)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    pen = ImageDraw.Draw(sheet)
    y = 0
    for caption, images in rows:
        pen.text((GAP, y + 1), caption, fill=INK)
        y += CAPTION_HEIGHT
        x = 0
        for im in images:
            sheet.paste(im.convert("RGB"), (x, y))
            x += im.width + GAP
        y += max(im.height for im in images) + GAP
    return sheet
