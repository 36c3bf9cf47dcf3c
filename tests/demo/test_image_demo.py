"""`lorakit demo image`: the generated shapes and their pixel measure, the settings, the pre-training cache, the
grid (fast), and one short end-to-end run whose green share must rise with the LoRA's strength (slow)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.cli.main import main
from lorakit.demo.image import shapes
from lorakit.demo.image.grid import GAP, HEADER, LABEL_WIDTH, ZOOM, make_grid
from lorakit.demo.image.pretrain import PretrainSettings, cache_key, encode, pretrained_pipeline
from lorakit.demo.image.run import image_config, run_image_demo, split_overrides
from lorakit.errors import ConfigError

TINY = PretrainSettings(images=16, batch_size=4, vae_steps=2, unet_steps=2, channels=(16, 32),
                        vae_channels=(8, 16, 16))


@pytest.mark.parametrize("colour", list(shapes.COLOURS))
def test_a_drawn_shape_measures_as_its_own_colour(colour):
    for shape in shapes.SHAPES:
        image = shapes.draw(colour, shape, 32, random.Random(1))
        shares = shapes.colour_shares(image)
        assert max(shares, key=shares.get) == colour and shares[colour] > 0.7, (shape, shares)


def test_shares_count_only_the_shape_and_match_a_hand_made_picture():
    pixels = np.full((10, 10, 3), shapes.BACKGROUND, dtype=np.uint8)
    pixels[:2, :5] = shapes.COLOURS["green"]  # 10 green pixels
    pixels[5:, 5:] = (200, 60, 50)  # 25 pixels nearer red than any other colour
    shares = shapes.colour_shares(Image.fromarray(pixels))
    assert shares["green"] == pytest.approx(10 / 35) and shares["red"] == pytest.approx(25 / 35)
    assert shapes.colour_shares(Image.new("RGB", (8, 8), shapes.BACKGROUND)) == dict.fromkeys(shapes.COLOURS, 0.0)


def test_image_folder_pairs_each_png_with_its_caption(tmp_path):
    pairs = shapes.sample(["green", "red"], 6, 32, seed=3)
    folder = shapes.write_image_folder(tmp_path / "data", pairs)
    for i, (image, text) in enumerate(pairs):
        assert (folder / f"{i:04d}.txt").read_text(encoding="utf-8").strip() == text
        assert text.split()[1] in ("green", "red") and text.split()[2] in shapes.SHAPES
        np.testing.assert_array_equal(np.asarray(Image.open(folder / f"{i:04d}.png")), np.asarray(image))


def test_demo_keys_and_training_keys_are_split_and_checked():
    settings, rest = split_overrides(["demo.seeds=2", "demo.guidance=2.5", "training.max_steps=7"])
    assert (settings.seeds, settings.guidance, rest) == (2, 2.5, ["training.max_steps=7"])
    assert image_config(rest).training.max_steps == 7
    with pytest.raises(ConfigError, match="seeds"):
        split_overrides(["demo.sedes=2"])
    with pytest.raises(ConfigError, match="positive"):
        split_overrides(["demo.seeds=0"])


def test_cli_refuses_a_bad_demo_key_in_one_line(capsys):
    assert main(["demo", "image", "demo.colour=green"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "demo.colour=green" in err and "new_images" in err


def test_encoded_latents_have_unit_spread_and_the_vae_keeps_the_scale():
    from lorakit.diffusion.tiny import _vae

    vae = _vae((8, 16)).eval()
    pixels = torch.rand(8, 3, 32, 32) * 2 - 1
    latents = encode(vae, pixels)
    torch.testing.assert_close(latents.std(), torch.tensor(1.0))
    with torch.no_grad():
        raw = vae.encode(pixels).latent_dist.mean
    torch.testing.assert_close(latents, raw * vae.config.scaling_factor)


def test_pretrained_base_is_cached_by_its_settings(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    lines: list[str] = []
    first, cached = pretrained_pipeline(TINY, lines.append)
    assert not cached and first.parent == tmp_path / "demo-image" and any("unet step 2/2" in x for x in lines)
    stamp = (first / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    again, cached = pretrained_pipeline(TINY, lines.append)
    assert cached and again == first
    assert (first / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert cache_key(TINY) != cache_key(PretrainSettings(**{**TINY.__dict__, "unet_steps": 3}))
    pipe = StableDiffusionPipeline.from_pretrained(first)
    assert pipe.vae.config.scaling_factor != 0.18215  # the measured scale was saved


def test_grid_places_each_image_enlarged_under_its_strength():
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    rows = [(f"prompt {r}", [[Image.new("RGB", (4, 4), colours[c])] * 2 for c in range(3)]) for r in range(2)]
    grid = np.asarray(make_grid(rows, (0.0, 0.5, 1.0)))
    cell, strip = 4 * ZOOM, 2 * 4 * ZOOM
    assert grid.shape == (HEADER + 2 * (cell + GAP), LABEL_WIDTH + 3 * (strip + GAP), 3)
    for r in range(2):
        for c in range(3):
            top, left = HEADER + r * (cell + GAP), LABEL_WIDTH + c * (strip + GAP)
            block = grid[top:top + cell, left:left + strip]
            assert (block == colours[c]).all()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_green_grows_with_strength(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    found = run_image_demo([f"output.dir={tmp_path / 'demo'}", "demo.vae_steps=250", "demo.unet_steps=300",
                            "demo.seeds=3", "demo.inference_steps=10", "training.max_steps=150",
                            "training.progress=false"], say=lines.append)
    grid = Image.open(found["grid"])
    assert grid.format == "PNG" and grid.width > 3 * 32
    green = [found["shares"][f"a green circle|green|{s}"] for s in ("0", "0.5", "1")]
    assert green[0] < green[1] < green[2] and green[2] > 0.3, green
    assert any(line.startswith("grid: ") for line in lines)
