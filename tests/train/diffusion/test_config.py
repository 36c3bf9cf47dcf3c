"""The diffusion: section in YAML configs, and the combinations refused before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.errors import ConfigError
from lorakit.train.config import TrainConfig, load_config
from lorakit.train.diffusion.config import DiffusionConfig

REPO = Path(__file__).resolve().parents[3]
BASE = """
model: {path: some-pipeline, task: text-to-image}
data: {path: images}
"""


def test_the_section_is_read_with_types_coerced_and_overrides():
    cfg = load_config(None, ["diffusion.snr_gamma=5", "diffusion.random_flip=yes", "diffusion.resolution=64"],
                      base=BASE + "diffusion: {noise_offset: '0.05'}\n")
    assert cfg.diffusion == DiffusionConfig(snr_gamma=5.0, random_flip=True, resolution=64, noise_offset=0.05)


def test_text_to_image_without_the_section_takes_its_defaults_and_writes_it():
    cfg = load_config(None, base=BASE)
    assert cfg.diffusion == DiffusionConfig()
    assert TrainConfig.from_dict(cfg.to_dict()).diffusion == DiffusionConfig()  # train_config.yaml reloads


def test_other_tasks_do_not_grow_a_diffusion_section():
    assert "diffusion" not in TrainConfig().to_dict()


def test_an_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['diffusion.resolutoin'\].*'resolution'"):
        load_config(None, ["diffusion.resolutoin=64"], base=BASE)


@pytest.mark.parametrize(("override", "message"), [
    ("model.task=causal-lm", "the diffusion: section applies to model.task=text-to-image"),
    ("training.method=full", "training.method=full is not available for model.task=text-to-image"),
    ("diffusion.prediction_type=sample", r"diffusion.prediction_type='sample': expected one of"),
    ("diffusion.snr_gamma=0", "diffusion.snr_gamma=0.0: expected a positive number"),
    ("diffusion.class_data_dir=classes", "diffusion.class_prompt is not"),
    ("training.metric=accuracy", "measures the denoising loss"),
])
def test_bad_combinations_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override], base=BASE + "diffusion: {}\n")
    assert "\n" not in str(info.value)


def test_the_example_config_is_valid_and_every_setting_is_commented():
    path = REPO / "configs" / "text-to-image-tiny.yaml"
    cfg = load_config(path)
    assert cfg.model.task == "text-to-image" and cfg.diffusion.snr_gamma == 5.0
    lines = path.read_text().splitlines()
    settings = [(line, before) for line, before in zip(lines, ["", *lines], strict=False)
                if line.startswith("  ") and not line.lstrip().startswith("#")]
    bare = [line for line, before in settings if "#" not in line and not before.lstrip().startswith("#")]
    assert not bare  # each setting has its comment, on its line or the line above
    assert {f.name for f in __import__("dataclasses").fields(DiffusionConfig)} <= {
        line.split(":")[0].strip() for line, _ in settings}


def test_a_diffusion_section_without_a_task_implies_text_to_image():
    assert load_config(None, ["diffusion.resolution=64"], base="").model.task == "text-to-image"


def test_a_run_without_images_is_refused_when_it_resolves():
    from lorakit.train.diffusion.config import resolve_text_to_image

    with pytest.raises(ConfigError, match=r"data\.path is not set: name a folder of images"):
        resolve_text_to_image(load_config(None, base="model: {path: p, task: text-to-image}\n"))
