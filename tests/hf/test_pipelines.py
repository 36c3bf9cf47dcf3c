"""Finding and loading diffusers pipelines (lorakit.hf.pipelines): local folders, Hub ids from the HF cache,
the components adapters go into, and one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from lorakit.diffusion.tiny import build_tiny_sd, build_tiny_sdxl  # noqa: E402
from lorakit.errors import ConfigError  # noqa: E402
from lorakit.hf.pipelines import (  # noqa: E402
    denoiser_name,
    is_pipeline_folder,
    load_pipeline,
    lora_components,
)
from tests.hf.hub_cache import add_snapshot, commit_id  # noqa: E402

REPO = "lorakit-test/tiny-sd"


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("pipelines") / "sd")


def unet_weights(pipe) -> torch.Tensor:
    return pipe.unet.conv_in.weight.detach()


def test_a_local_folder_loads_as_diffusers_loads_it(sd):
    pipe = load_pipeline(sd)
    reference = diffusers.DiffusionPipeline.from_pretrained(sd)
    assert type(pipe) is type(reference)
    torch.testing.assert_close(unet_weights(pipe), unet_weights(reference), rtol=0, atol=0)
    assert is_pipeline_folder(sd) and not is_pipeline_folder(sd / "unet")


def test_components_of_sd_and_sdxl(sd, tmp_path):
    pipe = load_pipeline(sd)
    assert denoiser_name(pipe) == "unet"
    assert list(lora_components(pipe)) == ["unet", "text_encoder"]
    assert lora_components(pipe)["text_encoder"] is pipe.text_encoder
    xl = load_pipeline(build_tiny_sdxl(tmp_path / "xl"))
    assert list(lora_components(xl)) == ["unet", "text_encoder", "text_encoder_2"]


def test_dtype_is_applied_to_every_component(sd):
    pipe = load_pipeline(sd, dtype="bfloat16")
    assert {m.dtype for m in lora_components(pipe).values()} == {torch.bfloat16}
    with pytest.raises(ConfigError, match="dtype='float8'"):
        load_pipeline(sd, dtype="float8")


def test_a_hub_id_loads_from_the_hf_cache_offline(sd, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_snapshot(tmp_path / "hf-home" / "hub", REPO, sd, commit_id("sd"))
    pipe = load_pipeline(REPO)
    torch.testing.assert_close(unet_weights(pipe), unet_weights(load_pipeline(sd)), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
        load_pipeline("lorakit-test/absent")


def test_missing_folder_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such folder") as info:
        load_pipeline(tmp_path / "absent")
    assert "\n" not in str(info.value)


def test_a_model_folder_without_model_index_is_refused_naming_what_it_holds(sd):
    with pytest.raises(ConfigError, match=r"no model_index.json; found \['config.json'") as info:
        load_pipeline(sd / "text_encoder")
    assert "\n" not in str(info.value)


def test_without_diffusers_the_error_names_the_extra(sd, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'lorakit\[diffusion\]'"):
        load_pipeline(sd)
