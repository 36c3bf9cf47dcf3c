"""The image-folder data: .txt captions, metadata.jsonl, instance_prompt, and the one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from lorakit.train.diffusion.images import (
    ImageDataError,
    crop_offset,
    open_image,
    read_image_folder,
    resized,
    to_tensor,
)
from tests.train.diffusion.helpers import image_folder


def test_txt_captions_are_read_next_to_each_image(tmp_path):
    folder = image_folder(tmp_path / "imgs", count=3, caption="a red square")
    (folder / "img01.txt").write_text("  a blue circle\n")
    examples = read_image_folder(folder)
    assert [e.path.name for e in examples] == ["img00.png", "img01.png", "img02.png"]
    assert [e.caption for e in examples] == ["a red square", "a blue circle", "a red square"]


def test_metadata_jsonl_captions_win_over_txt_files(tmp_path):
    folder = image_folder(tmp_path / "imgs", count=2, caption="from the txt file")
    rows = [{"file_name": "img00.png", "text": "a photo of sks dog"}, {"file_name": "img01.png", "text": ""}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples = read_image_folder(folder)
    assert [e.caption for e in examples] == ["a photo of sks dog", "from the txt file"]


def test_metadata_columns_are_configurable(tmp_path):
    folder = image_folder(tmp_path / "imgs", count=1, caption=None)
    (folder / "metadata.jsonl").write_text(json.dumps({"image": "img00.png", "prompt": "a green star"}) + "\n")
    examples = read_image_folder(folder, image_column="image", caption_column="prompt")
    assert examples[0].caption == "a green star"


def test_instance_prompt_captions_images_without_one(tmp_path):
    folder = image_folder(tmp_path / "imgs", count=2, caption=None)
    (folder / "img00.txt").write_text("its own caption")
    examples = read_image_folder(folder, instance_prompt="a photo of sks dog")
    assert [e.caption for e in examples] == ["its own caption", "a photo of sks dog"]


def test_an_empty_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageDataError, match="holds no images") as info:
        read_image_folder(tmp_path / "empty")
    assert "\n" not in str(info.value)


def test_a_missing_caption_without_instance_prompt_names_the_image_and_the_way_out(tmp_path):
    folder = image_folder(tmp_path / "imgs", count=2, caption=None)
    with pytest.raises(ImageDataError, match=r"img00\.png: no caption .*diffusion\.instance_prompt"):
        read_image_folder(folder)


def test_metadata_naming_a_missing_image_is_refused(tmp_path):
    folder = image_folder(tmp_path / "imgs", count=1)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "nope.png", "text": "x"}) + "\n")
    with pytest.raises(ImageDataError, match=r"'nope\.png' names no image"):
        read_image_folder(folder)


def test_an_unreadable_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageDataError, match=r"broken\.png: not a readable image"):
        open_image(tmp_path / "broken.png")


def test_pixels_are_resized_cropped_flipped_and_scaled_to_minus_one_one():
    image = Image.new("RGB", (64, 32))
    image.paste((255, 0, 0), (0, 0, 32, 32))  # left half red, right half black
    small = resized(image, 16)
    assert small.size == (32, 16)  # the shorter side to the resolution, aspect kept
    top, left = crop_offset(small.size, 16, center=True, generator=torch.Generator())
    assert (top, left) == (0, 8)
    pixels = to_tensor(small, top, left, 16, flip=False)
    assert pixels.shape == (3, 16, 16) and pixels.min() >= -1 and pixels.max() <= 1
    assert pixels[0, :, 0].mean() > 0.9 and pixels[0, :, -1].mean() < -0.9  # red on the left
    assert torch.equal(to_tensor(small, top, left, 16, flip=True), pixels.flip(-1))


def test_random_crops_come_from_the_generator():
    offsets = {crop_offset((80, 16), 16, center=False, generator=torch.Generator().manual_seed(s)) for s in range(8)}
    assert len(offsets) > 1 and all(top == 0 and 0 <= left <= 64 for top, left in offsets)
