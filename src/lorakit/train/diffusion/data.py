"""The example sets of a text-to-image run: training and validation images (and DreamBooth's class images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorakit.errors import ConfigError
from lorakit.train.diffusion.images import METADATA, ImageExample, read_image_folder
from lorakit.train.diffusion.prior import class_images


def split_examples(cfg: Any) -> tuple[list[ImageExample], list[ImageExample], dict[str, Any]]:
    """(train, validation, stats) from data.path, and data.validation_file (a folder) or data.validation_split
    (a seeded shuffle holds that fraction out)."""
    d, data = cfg.diffusion, cfg.data
    read = dict(image_column=d.image_column, caption_column=d.caption_column, instance_prompt=d.instance_prompt)
    train = read_image_folder(data.path, **read)
    if data.validation_file is not None:
        val = read_image_folder(data.validation_file, role="data.validation_file", **read)
    elif data.validation_split:
        if not 0 < data.validation_split < 1:
            raise ConfigError(f"data.validation_split={data.validation_split}: expected a fraction in (0, 1)")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.training.seed)).tolist()
        held = max(1, round(len(train) * data.validation_split))
        if held >= len(train):
            raise ConfigError(f"data.validation_split={data.validation_split} leaves no training image out of "
                              f"{len(train)}; lower it or add images")
        val = [train[i] for i in sorted(order[:held])]
        train = [train[i] for i in sorted(order[held:])]
    else:
        val = []
    captions = "metadata.jsonl" if (Path(data.path) / METADATA).is_file() else ".txt captions / instance_prompt"
    stats = {"format": f"image folder ({captions})", "train_examples": len(train), "validation_examples": len(val),
             "labels": None}
    return train, val, stats


def class_examples(cfg: Any) -> list[ImageExample]:
    """The class images of prior preservation (each captioned with diffusion.class_prompt), at most
    num_class_images."""
    d = cfg.diffusion
    if d.class_data_dir is None:
        return []
    found = class_images(Path(d.class_data_dir))[:d.num_class_images]
    return [ImageExample(path, d.class_prompt) for path in found]
