"""The image-folder data of a text-to-image run: which images, their captions, and how each becomes a tensor.

A folder holds images (.png .jpg .jpeg .webp .bmp), captioned either by same-name .txt files (`dog1.png` +
`dog1.txt`) or by a `metadata.jsonl` (diffusers' ImageFolder layout: one JSON object per line with the image's
file name and its caption). An image without a caption takes diffusion.instance_prompt.
Pixels: resized so the shorter side is `resolution`, cropped to a square (center or at an offset chosen by the
caller), optionally flipped, scaled to [-1, 1] as the VAE expects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.errors import LorakitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA = "metadata.jsonl"


class ImageDataError(LorakitError):
    """The image folder cannot be read: empty, an unreadable image, a caption missing."""


@dataclass(frozen=True)
class ImageExample:
    path: Path
    caption: str


def read_image_folder(folder: str | Path, image_column: str = "file_name", caption_column: str = "text",
                      instance_prompt: str | None = None, role: str = "data.path") -> list[ImageExample]:
    """The captioned images of `folder`, in name order (metadata.jsonl's captions win over .txt files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageDataError(f"{role}={str(folder)!r} is not a folder; name a folder of images with captions")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ImageDataError(f"{role}={str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some, or "
                             "name another folder")
    captions = _metadata_captions(folder, image_column, caption_column)
    unknown = sorted(set(captions) - {p.name for p in images})
    if unknown:
        raise ImageDataError(f"{folder / METADATA}: {image_column} {unknown[0]!r} names no image in {folder}")
    examples = []
    for path in images:
        caption = captions.get(path.name)
        text_file = path.with_suffix(".txt")
        if caption is None and text_file.is_file():
            caption = text_file.read_text(encoding="utf-8").strip()
        if not caption:
            caption = instance_prompt
        if not caption:
            raise ImageDataError(f"{path}: no caption (no {text_file.name}, no {METADATA} entry); write one, or set "
                                 "diffusion.instance_prompt to caption every image without one")
        examples.append(ImageExample(path, caption))
    return examples


def _metadata_captions(folder: Path, image_column: str, caption_column: str) -> dict[str, str]:
    file = folder / METADATA
    if not file.is_file():
        return {}
    captions: dict[str, str] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ImageDataError(f"{file}:{number}: not valid JSON") from None
        if not isinstance(row, dict) or image_column not in row:
            raise ImageDataError(f"{file}:{number}: missing field {image_column!r} (set diffusion.image_column to "
                                 "the field naming the image file)")
        caption = row.get(caption_column)
        if caption is not None and not isinstance(caption, str):
            raise ImageDataError(f"{file}:{number}: {caption_column!r} is {caption!r}, expected text")
        captions[Path(str(row[image_column])).name] = caption or ""
    return {name: text for name, text in captions.items() if text}


def open_image(path: Path):
    """The image as RGB (PIL), or one line naming the file that cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageDataError(f"{path}: not a readable image ({exc.__class__.__name__}); fix or remove the file") \
            from None


def resized(image, resolution: int):
    """Shorter side to `resolution` (bilinear), the aspect ratio kept."""
    from PIL import Image

    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return image.resize(size, Image.BILINEAR)


def crop_offset(size: tuple[int, int], resolution: int, center: bool, generator: torch.Generator) -> tuple[int, int]:
    """(top, left) of the square crop: the centre, or uniform at random from `generator`."""
    width, height = size
    if center:
        return (height - resolution) // 2, (width - resolution) // 2
    top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator))
    return top, left


def to_tensor(image, top: int, left: int, resolution: int, flip: bool) -> torch.Tensor:
    """(3, resolution, resolution) in [-1, 1], cropped at (top, left), mirrored left-right when `flip`."""
    import numpy as np

    crop = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0
    return pixels.flip(-1) if flip else pixels
