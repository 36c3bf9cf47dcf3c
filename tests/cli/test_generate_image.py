"""`lorakit generate PIPELINE`: PNGs of the size asked, seeded bytes, adapters at their weights (checked against
the library path), --compare, and one-line refusals that write nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")  # the adapter files are made by diffusers + PEFT (test-only)
from PIL import Image

from lorakit.cli.main import main
from lorakit.diffusion.files import load_pipeline_adapter
from lorakit.diffusion.png import CAPTION_HEIGHT, GAP
from lorakit.diffusion.tiny import build_tiny_sd
from lorakit.diffusion.weights import set_adapter_weights
from lorakit.hf.pipelines import load_pipeline
from tests.cli.cli_helpers import one_error_line
from tests.diffusion.pipeline_helpers import write_diffusers_lora
from tests.hf.hub_cache import add_snapshot, commit_id

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("gen") / "sd")


@pytest.fixture(scope="module")
def lora(sd, tmp_path_factory) -> Path:
    return write_diffusers_lora(load_pipeline(sd), tmp_path_factory.mktemp("gen-lora") / "a", 3, 4, 8,
                                text_rank=2, text_alpha=2)


def generate(sd, out, *extra) -> int:
    return main(["generate", str(sd), "--prompt", PROMPT, "--steps", "2", "--out", str(out), *map(str, extra)])


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def library_image(sd, lora=None, weight=1.0, **options) -> np.ndarray:
    """The same image made through the library: load, adapter at its weight, the pipeline's own call."""
    pipe = load_pipeline(sd)
    if lora is not None:
        load_pipeline_adapter(pipe, lora, adapter_name="x")
        set_adapter_weights(pipe, {"x": weight})
    image = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0), **options).images[0]
    return np.asarray(image.convert("RGB"))


def test_writes_a_png_of_the_size_asked_and_prints_its_path(sd, tmp_path, capsys):
    assert generate(sd, tmp_path / "a.png", "--size", "24x40") == 0
    with Image.open(tmp_path / "a.png") as image:
        assert image.format == "PNG" and image.size == (40, 24)  # PIL: (width, height)
    assert capsys.readouterr().out.strip() == str(tmp_path / "a.png")


def test_a_pipeline_hub_id_in_the_hf_cache_is_found_without_pipeline_flag(sd, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    add_snapshot(tmp_path / "hf-home" / "hub", "lorakit-test/tiny-sd", sd, commit_id("tiny-sd"))
    assert generate("lorakit-test/tiny-sd", tmp_path / "hub.png") == 0
    assert generate(sd, tmp_path / "local.png") == 0
    assert (tmp_path / "hub.png").read_bytes() == (tmp_path / "local.png").read_bytes()


def test_the_same_seed_gives_the_same_bytes(sd, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert generate(sd, tmp_path / f"{name}.png", "--seed", seed) == 0
    data = {name: (tmp_path / f"{name}.png").read_bytes() for name in "abc"}
    assert data["a"] == data["b"] and data["a"] != data["c"]


def test_adapters_at_their_weights_give_the_library_image(sd, lora, tmp_path):
    assert generate(sd, tmp_path / "w.png", "--adapter", f"{lora}:0.5") == 0
    np.testing.assert_array_equal(pixels(tmp_path / "w.png"), library_image(sd, lora, 0.5))
    assert generate(sd, tmp_path / "s.png", "--adapter", f"{lora}:2", "--scale", "0.25") == 0  # 2 * 0.25
    np.testing.assert_array_equal(pixels(tmp_path / "s.png"), pixels(tmp_path / "w.png"))
    assert np.abs(pixels(tmp_path / "w.png").astype(int) - library_image(sd).astype(int)).max() > 0  # guard


def test_negative_prompt_and_guidance_reach_the_pipeline(sd, tmp_path):
    assert generate(sd, tmp_path / "n.png", "--negative-prompt", "blue", "--guidance", "3") == 0
    expected = library_image(sd, negative_prompt="blue", guidance_scale=3.0)
    np.testing.assert_array_equal(pixels(tmp_path / "n.png"), expected)
    assert not np.array_equal(expected, library_image(sd))  # guard: the options change the image


def test_two_adapters_at_once_add_up(sd, lora, tmp_path):
    assert generate(sd, tmp_path / "two.png", "--adapter", f"{lora}:0.5", "--adapter", f"{lora}:0.5") == 0
    np.testing.assert_array_equal(pixels(tmp_path / "two.png"), library_image(sd, lora, 1.0))


def test_compare_puts_base_and_adapter_rows_in_one_png(sd, lora, tmp_path):
    assert generate(sd, tmp_path / "cmp.png", "--adapter", lora, "--compare", "--num-images", 2) == 0
    sheet = pixels(tmp_path / "cmp.png")
    assert sheet.shape[0] == 2 * (CAPTION_HEIGHT + 32 + GAP)
    base_row = sheet[CAPTION_HEIGHT:CAPTION_HEIGHT + 32, :32]
    adapter_top = 2 * CAPTION_HEIGHT + 32 + GAP
    np.testing.assert_array_equal(base_row, library_image(sd))
    np.testing.assert_array_equal(sheet[adapter_top:adapter_top + 32, :32], library_image(sd, lora))


def test_several_images_are_numbered_files(sd, tmp_path, capsys):
    assert generate(sd, tmp_path / "many.png", "--num-images", 2) == 0
    written = [tmp_path / "many-0.png", tmp_path / "many-1.png"]
    assert capsys.readouterr().out.split() == [str(p) for p in written]
    assert not np.array_equal(pixels(written[0]), pixels(written[1]))


@pytest.mark.parametrize("case", ["missing pipeline", "bad size", "bad steps", "chat flag", "missing adapter"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(sd, tmp_path, capsys, case):
    out = tmp_path / "x.png"
    args = {"missing pipeline": [tmp_path / "nowhere", "--prompt", "p", "--out", out],
            "bad size": [sd, "--prompt", "p", "--size", "32x", "--out", out],
            "bad steps": [sd, "--prompt", "p", "--steps", "0", "--out", out],
            "chat flag": [sd, "--prompt", "p", "--chat", "--out", out],
            "missing adapter": [sd, "--prompt", "p", "--adapter", tmp_path / "none.safetensors", "--out", out]}[case]
    assert main(["generate", *map(str, args)]) == 2
    err = one_error_line(capsys, "generate")
    expected = {"missing pipeline": "no such file or folder", "bad size": "HEIGHTxWIDTH", "bad steps": "--steps 0",
                "chat flag": "--chat applies to text generation", "missing adapter": "no such file or folder"}
    assert expected[case] in err
    assert list(tmp_path.iterdir()) == []


def test_an_adapter_for_another_pipeline_is_refused_before_anything_is_written(sd, tmp_path, capsys):
    other = build_tiny_sd(tmp_path / "other", channels=(16, 32))
    wrong = write_diffusers_lora(load_pipeline(other), tmp_path / "wrong", 4, 2, 2)
    capsys.readouterr()  # the build's own output
    assert generate(sd, tmp_path / "x.png", "--adapter", wrong) == 2
    err = one_error_line(capsys, "generate")
    assert "wrong" in err and "lora_A is (2, 16) in the file" in err
    assert not (tmp_path / "x.png").exists()


def test_a_text_model_refuses_image_options_and_several_adapters(tmp_path, capsys):
    from lorakit.hf.tiny import make_tiny_model
    from tests.cli.cli_helpers import adapter_on

    base = make_tiny_model(tmp_path / "llama", "llama")
    adapter_on(base, tmp_path / "adapter")
    capsys.readouterr()  # the build's own output
    assert main(["generate", str(base), "--prompt", "hi", "--steps", "3"]) == 2
    assert "--steps applies to image generation" in one_error_line(capsys, "generate")
    two = ["--adapter", str(tmp_path / "adapter"), "--adapter", str(tmp_path / "adapter")]
    assert main(["generate", str(base), "--prompt", "hi", *two]) == 2
    assert "one --adapter" in one_error_line(capsys, "generate")
