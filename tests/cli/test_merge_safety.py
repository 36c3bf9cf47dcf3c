"""`lorakit merge`: BASE taken from the run, NaN/Inf refused by default, OUT replaced only when complete."""

from __future__ import annotations

import errno
import json

import pytest
import torch
import yaml
from transformers import PreTrainedModel

from lorakit.cli.main import main
from lorakit.hf.tiny import make_tiny_model
from tests.cli.cli_helpers import adapter_on, merged_logits, one_error_line


def test_base_comes_from_the_runs_train_config(tmp_path, monkeypatch):
    base = make_tiny_model(tmp_path / "base", "llama")
    expected = adapter_on(base, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/not-a-local-dir"  # only train_config.yaml can tell
    (tmp_path / "run" / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "run" / "train_config.yaml").write_text(yaml.safe_dump({"model": {"path": str(base),
                                                                                    "task": "causal-lm"}}))
    monkeypatch.chdir(tmp_path)
    assert main(["merge", "run", "merged"]) == 0
    torch.testing.assert_close(merged_logits(tmp_path / "merged"), expected)


def test_base_comes_from_the_adapters_base_model_name_or_path(tmp_path):
    base = make_tiny_model(tmp_path / "base", "llama")
    expected = adapter_on(base, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert main(["merge", str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    torch.testing.assert_close(merged_logits(tmp_path / "merged"), expected)


def test_a_base_that_cannot_be_found_asks_for_it(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "base", "llama")
    adapter_on(base, tmp_path / "adapter")
    capsys.readouterr()  # set-up output (transformers' progress bars)
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": "org/x"}))
    assert main(["merge", str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 2
    assert "pass it: lorakit merge BASE" in one_error_line(capsys)
    assert not (tmp_path / "merged").exists()


def test_a_nan_adapter_is_refused_by_default_and_nothing_is_written(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "base", "llama")
    adapter_on(base, tmp_path / "adapter", poison=True)
    capsys.readouterr()  # set-up output (transformers' progress bars)
    assert main(["merge", str(base), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 2
    assert "NaN/Inf" in one_error_line(capsys)
    assert not (tmp_path / "merged").exists()
    assert main(["merge", str(base), str(tmp_path / "adapter"), str(tmp_path / "m2"), "--safe-merge"]) == 2
    one_error_line(capsys)
    # the check can be skipped on purpose: then the NaN does reach the weights
    assert main(["merge", str(base), str(tmp_path / "adapter"), str(tmp_path / "m3"), "--no-safe-merge"]) == 0
    assert merged_logits(tmp_path / "m3").isnan().any()


def failing_save(monkeypatch):
    """save_pretrained that writes half a file, then finds the disk full."""
    def save_pretrained(self, directory, *args, **kwargs):
        (directory / "model.safetensors").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "model.safetensors"))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)


def test_a_full_disk_leaves_no_partial_output(tmp_path, capsys, monkeypatch):
    base = make_tiny_model(tmp_path / "base", "llama")
    adapter_on(base, tmp_path / "adapter")
    capsys.readouterr()  # set-up output (transformers' progress bars)
    failing_save(monkeypatch)
    assert main(["merge", str(base), str(tmp_path / "adapter"), str(tmp_path / "out" / "merged")]) != 0
    assert "No space left on device" in one_error_line(capsys)
    assert list((tmp_path / "out").iterdir()) == []  # neither OUT nor a temporary folder


def test_overwrite_keeps_the_old_output_whole_until_the_new_one_is_complete(tmp_path, capsys, monkeypatch):
    base = make_tiny_model(tmp_path / "base", "llama")
    first = adapter_on(base, tmp_path / "a1")
    second = adapter_on(base, tmp_path / "a2")
    assert not torch.allclose(first, second)
    out = tmp_path / "out"
    assert main(["merge", str(base), str(tmp_path / "a1"), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with monkeypatch.context() as patch:
        failing_save(patch)
        assert main(["merge", str(base), str(tmp_path / "a2"), str(out), "--overwrite"]) != 0
    one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "stale.txt").write_text("from an older run")
    assert main(["merge", str(base), str(tmp_path / "a2"), str(out), "--overwrite"]) == 0
    torch.testing.assert_close(merged_logits(out), second)
    assert not (out / "stale.txt").exists()  # OUT is the new model only, not a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1", "a2", "base", "out"]  # no temporary leftovers


@pytest.mark.parametrize("which", ["adapter", "base"])
def test_out_may_not_be_an_input(tmp_path, capsys, which):
    base = make_tiny_model(tmp_path / "base", "llama")
    adapter_on(base, tmp_path / "adapter")
    capsys.readouterr()  # set-up output (transformers' progress bars)
    out = tmp_path / which
    before = sorted(p.name for p in out.iterdir())
    assert main(["merge", str(base), str(tmp_path / "adapter"), str(out), "--overwrite"]) == 2
    assert "which writing OUT would delete" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == before
