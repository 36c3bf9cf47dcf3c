"""Image folders and configs for the text-to-image training tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from lorakit.train.config import TrainConfig


def image_folder(folder: Path, count: int = 8, colour: tuple[int, int, int] = (220, 40, 30),
                 caption: str | None = "a red square", size: tuple[int, int] = (40, 32)) -> Path:
    """`count` images of one colour (slightly varied), each with a same-name .txt caption unless caption is None."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (colour[0], colour[1] + 3 * i, colour[2])).save(folder / f"img{i:02d}.png")
        if caption is not None:
            (folder / f"img{i:02d}.txt").write_text(caption)
    return folder


def t2i_config(pipe: Path, data: Path, out: Path, diffusion: dict[str, Any] | None = None,
               training: dict[str, Any] | None = None, lora: dict[str, Any] | None = None,
               data_extra: dict[str, Any] | None = None) -> TrainConfig:
    """A small, fast text-to-image run on CPU: no plots, no trackers, no progress lines."""
    return TrainConfig.from_dict({
        "model": {"path": str(pipe), "task": "text-to-image"},
        "lora": {"r": 4, "lora_alpha": 4, **(lora or {})},
        "data": {"path": str(data), **(data_extra or {})},
        "diffusion": {"resolution": 32, **(diffusion or {})},
        "training": {"max_steps": 4, "batch_size": 2, "lr": 1e-2, "scheduler": "constant", "device": "cpu",
                     "progress": False, "eval_every": 1000, **(training or {})},
        "output": {"dir": str(out), "report_to": "none", "plot": False},
    })
