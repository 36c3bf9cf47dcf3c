"""`lorakit convert`: diffusers -> kohya -> peft -> diffusers moves every tensor unchanged; bad input is one line,
exit 2, and nothing written."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

diffusers = pytest.importorskip("diffusers")

from lorakit.cli.main import main  # noqa: E402
from lorakit.diffusion import files  # noqa: E402
from lorakit.diffusion.files import save_pipeline_adapter  # noqa: E402
from lorakit.diffusion.tiny import build_tiny_sd  # noqa: E402
from tests.cli.cli_helpers import one_error_line  # noqa: E402
from tests.diffusion.lora_support import add_random_lora, load  # noqa: E402


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def lora(sd, tmp_path_factory):
    pipe = load(sd)
    add_random_lora(pipe)  # UNet (rank_pattern, alpha_pattern) and text encoder
    return save_pipeline_adapter(pipe, tmp_path_factory.mktemp("lora") / "lora")


def _configs(file) -> str:
    with safe_open(str(file), "pt") as handle:
        return handle.metadata()["lora_adapter_metadata"]


@pytest.mark.parametrize("with_base", [True, False])
def test_diffusers_kohya_peft_diffusers_gives_identical_tensors(sd, lora, tmp_path, capsys, with_base):
    base = ["--base", str(sd)] if with_base else []
    assert main(["convert", str(lora.parent), str(tmp_path / "k"), "--to", "kohya"]) == 0
    assert main(["convert", str(tmp_path / "k"), str(tmp_path / "p"), "--to", "peft", *base]) == 0
    assert main(["convert", str(tmp_path / "p"), str(tmp_path / "d.safetensors"), "--to", "diffusers"]) == 0
    assert "wrote" in capsys.readouterr().out
    before, after = load_file(lora), load_file(tmp_path / "d.safetensors")
    if not with_base:  # without the pipeline, CLIP's names keep their "text_model." level (diffusers drops it)
        after = {k.replace("text_encoder.text_model.", "text_encoder."): t for k, t in after.items()}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for field in ('"unet.r": 4', '"unet.lora_alpha": 6', '"text_encoder.lora_alpha": 5'):
        assert field in _configs(tmp_path / "d.safetensors")
    assert '"unet.alpha_pattern": {\n    "' in _configs(tmp_path / "d.safetensors")  # to_out.0's alpha, per module


def _assert_refused(capsys, out) -> str:
    line = one_error_line(capsys, "convert")
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers
    return line


def test_missing_source_is_refused(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "out"), "--to", "kohya"]) == 2
    assert "does not exist" in _assert_refused(capsys, tmp_path / "out")


def test_unknown_layout_is_refused(tmp_path, capsys):
    save_file({"model.layers.0.q_proj.weight": torch.ones(2, 2)}, tmp_path / "model.safetensors")
    assert main(["convert", str(tmp_path / "model.safetensors"), str(tmp_path / "out"), "--to", "diffusers"]) == 2
    assert "not a LoRA layout lorakit reads" in _assert_refused(capsys, tmp_path / "out")


def test_unknown_target_format_is_refused(lora, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(lora), str(tmp_path / "out"), "--to", "gguf"])
    assert exit_.value.code == 2 and "invalid choice: 'gguf'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_name_that_matches_no_module_is_refused(sd, tmp_path, capsys):
    save_file({"lora_unet_down_blocks_0_attentions_0_to_zz.lora_down.weight": torch.ones(2, 32),
               "lora_unet_down_blocks_0_attentions_0_to_zz.lora_up.weight": torch.ones(32, 2)},
              tmp_path / "k.safetensors")
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "k.safetensors"), str(out), "--to", "peft", "--base", str(sd)]) == 2
    assert "to_zz matches no module" in _assert_refused(capsys, out)
    assert main(["convert", str(tmp_path / "k.safetensors"), str(out), "--to", "peft"]) == 2
    assert "--base PIPELINE" in _assert_refused(capsys, out)


def test_a_failing_write_leaves_nothing(lora, tmp_path, capsys, monkeypatch):
    def broken(adapter, target):
        (target / "half.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(files.WRITERS, "kohya", broken)
    assert main(["convert", str(lora), str(tmp_path / "out"), "--to", "kohya"]) == 1
    assert "No space left" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_kept_without_overwrite(lora, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["convert", str(lora), str(tmp_path / "out"), "--to", "kohya"]) == 2
    assert "--overwrite" in one_error_line(capsys, "convert")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert main(["convert", str(lora), str(tmp_path / "out"), "--to", "kohya", "--overwrite"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["lora.safetensors"]
