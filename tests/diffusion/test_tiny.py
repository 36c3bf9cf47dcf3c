"""The tiny pipelines stand in for real Stable Diffusion folders: plain diffusers must load and run them."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from lorakit.diffusion.tiny import build_tiny_sd, build_tiny_sdxl  # noqa: E402


@pytest.mark.parametrize(("builder", "pipeline_class"), [(build_tiny_sd, "StableDiffusionPipeline"),
                                                         (build_tiny_sdxl, "StableDiffusionXLPipeline")])
def test_tiny_pipeline_loads_and_generates_in_diffusers(tmp_path, builder, pipeline_class):
    builder(tmp_path / "pipe", words=["zebra"])
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert type(pipe).__name__ == pipeline_class
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red zebra", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (1, 32, 32, 3)
    assert (tmp_path / "pipe" / "model_index.json").is_file()


def test_clip_tokenizer_spells_known_words_as_one_token(tmp_path):
    build_tiny_sd(tmp_path / "pipe", words=["zebra"])
    tokenizer = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe").tokenizer
    ids = tokenizer("a red zebra").input_ids
    assert [tokenizer.convert_ids_to_tokens(i) for i in ids[1:-1]] == ["a</w>", "red</w>", "zebra</w>"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    unknown = tokenizer("qqx").input_ids[1:-1]
    assert len(unknown) > 1  # an unknown word falls back to pieces, as in CLIP
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "a red zebra"
