"""`lorakit merge ADAPTER OUT --base PIPELINE`: a fused plain pipeline folder that plain diffusers loads, with the
adapted pipeline's outputs at the weight asked; the base found from the run; one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")  # the adapter file is made by diffusers + PEFT (test-only)

from lorakit.cli.main import main  # noqa: E402
from lorakit.diffusion.files import load_pipeline_adapter  # noqa: E402
from lorakit.diffusion.tiny import build_tiny_sd  # noqa: E402
from lorakit.diffusion.weights import set_adapter_weights  # noqa: E402
from lorakit.hf.pipelines import load_pipeline  # noqa: E402
from lorakit.hf.tiny import make_tiny_model  # noqa: E402
from tests.cli.cli_helpers import adapter_on, one_error_line  # noqa: E402
from tests.diffusion.pipeline_helpers import image, text_output, unet_output, write_diffusers_lora  # noqa: E402


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("merge") / "sd")


@pytest.fixture(scope="module")
def lora(sd, tmp_path_factory) -> Path:
    return write_diffusers_lora(load_pipeline(sd), tmp_path_factory.mktemp("merge-lora") / "a", 5, 4, 8,
                                text_rank=2, text_alpha=4)


def adapted(sd, lora, weight):
    pipe = load_pipeline(sd)
    load_pipeline_adapter(pipe, lora, adapter_name="x")
    set_adapter_weights(pipe, {"x": weight})
    return pipe


def plain(folder):
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_merged_folder_loads_in_plain_diffusers_with_the_adapted_outputs(sd, lora, tmp_path):
    assert main(["merge", str(lora), str(tmp_path / "out"), "--base", str(sd)]) == 0
    merged, expected = plain(tmp_path / "out"), adapted(sd, lora, 1.0)
    assert not any("lora" in name for name, _ in merged.unet.named_parameters())
    assert not any("lora" in name for name, _ in merged.text_encoder.named_parameters())
    torch.testing.assert_close(unet_output(merged), unet_output(expected))
    torch.testing.assert_close(text_output(merged), text_output(expected))
    torch.testing.assert_close(image(merged), image(expected))
    assert (unet_output(merged) - unet_output(load_pipeline(sd))).abs().max() > 1e-3  # guard: the LoRA is in it


def test_scale_is_the_weight_fused_in(sd, lora, tmp_path):
    assert main(["merge", str(lora), str(tmp_path / "out"), "--base", str(sd), "--scale", "0.5"]) == 0
    torch.testing.assert_close(unet_output(plain(tmp_path / "out")), unet_output(adapted(sd, lora, 0.5)))


def test_the_base_comes_from_the_run_beside_the_adapter(sd, lora, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pytorch_lora_weights.safetensors").write_bytes((lora / "pytorch_lora_weights.safetensors").read_bytes())
    (run / "train_config.yaml").write_text(f"model:\n  path: {sd}\n  task: text-to-image\n")
    assert main(["merge", str(run), str(tmp_path / "out")]) == 0
    torch.testing.assert_close(unet_output(plain(tmp_path / "out")), unet_output(adapted(sd, lora, 1.0)))


def test_pipeline_as_positional_base_works_too(sd, lora, tmp_path):
    assert main(["merge", str(sd), str(lora), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model_index.json").is_file()


def test_without_a_recorded_base_it_asks_for_base_and_writes_nothing(lora, tmp_path, capsys):
    assert main(["merge", str(lora), str(tmp_path / "out")]) == 2
    assert "--base PIPELINE" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_adapter_for_another_pipeline_is_one_line_and_writes_nothing(sd, tmp_path, capsys):
    other = build_tiny_sd(tmp_path / "other", channels=(16, 32))
    wrong = write_diffusers_lora(load_pipeline(other), tmp_path / "wrong", 4, 2, 2)
    capsys.readouterr()  # the build's own output
    assert main(["merge", str(wrong), str(tmp_path / "out"), "--base", str(sd)]) == 2
    assert "lora_A is (2, 16) in the file" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_scale_on_a_text_adapter_is_refused(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "base", "llama")
    adapter_on(base, tmp_path / "adapter")
    capsys.readouterr()  # the build's own output
    assert main(["merge", str(base), str(tmp_path / "adapter"), str(tmp_path / "out"), "--scale", "0.5"]) == 2
    assert "--scale applies to diffusion adapters" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
