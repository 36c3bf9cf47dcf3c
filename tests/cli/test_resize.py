"""`lorakit resize` and `lorakit inspect --suggest-rank`: the written adapter is each layer's best rank-k
approximation and loads in PEFT; the suggestion matches a hand-built spectrum; user mistakes are one line, exit 2,
and write nothing."""

from __future__ import annotations

import json

import pytest
import torch

import lorakit
from lorakit.cli.main import main
from lorakit.inject import lora_layers
from lorakit.io.checkpoint import read_adapter
from tests.cli.cli_helpers import one_error_line
from tests.helpers import logits, tiny_llama, token_ids

Q0, Q1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"


def adapter_with_spectra(tmp_path, spectra: dict[str, list[float]]):
    """A rank-4 q_proj adapter (scaling 2) whose updates have exactly these singular values."""
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                  init_lora_weights=False))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for path, values in spectra.items():  # s B A = U diag(values) V^T, U and V orthonormal
            a, b = model.get_submodule(path).lora_weights("default")
            u = torch.linalg.qr(torch.randn(b.shape[0], 4, generator=gen))[0]
            v = torch.linalg.qr(torch.randn(a.shape[1], 4, generator=gen))[0]
            a.copy_(torch.diag(torch.tensor(values) / 2) @ v.T)
            b.copy_(u)
    lorakit.save_adapter(model, tmp_path / "adapter")
    return model, tmp_path / "adapter"


SPECTRA = {Q0: [3.0, 2.0, 1.2, 0.5], Q1: [5.0, 0.5, 0.1, 0.05]}  # at 0.9 of the energy: ranks 3 and 1
# (shares kept: Q0 13 / 14.69 at rank 2, 14.44 / 14.69 at 3; Q1 25 / 25.2625 at rank 1; distinct values, so each
# truncation is unique)


def test_suggest_rank_json_matches_the_hand_built_spectra(tmp_path, capsys):
    _, adapter = adapter_with_spectra(tmp_path, SPECTRA)
    assert main(["inspect", str(adapter), "--no-plot", "--json", "--energy", "0.9"]) == 0
    report = json.loads(capsys.readouterr().out)["suggest_rank"]
    assert {e["path"]: e["rank"] for e in report["layers"]} == {Q0: 3, Q1: 1}
    assert report["overall_rank"] == 3
    assert report["layers"][0]["energy_kept"] == pytest.approx(14.44 / 14.69)
    per_rank = 32 + 32  # q_proj: A (r, 32), B (32, r)
    assert report["params_now"] == 2 * 4 * per_rank
    assert report["params_at_overall_rank"] == 2 * 3 * per_rank
    assert report["bytes_at_overall_rank"] == 4 * 2 * 3 * per_rank  # float32 factors


def test_suggest_rank_table(tmp_path, capsys):
    _, adapter = adapter_with_spectra(tmp_path, SPECTRA)
    assert main(["inspect", str(adapter), "--no-plot", "--suggest-rank"]) == 0
    out = capsys.readouterr().out
    assert "overall: rank 3" in out and "--rank 3" in out
    row = next(line for line in out.splitlines() if Q1 in line and "0.9896" in line)
    assert row.split()[1:3] == ["4", "1"]


def test_resize_energy_writes_the_truncation_and_peft_loads_it(tmp_path, capsys):
    from peft import PeftModel

    model, adapter = adapter_with_spectra(tmp_path, SPECTRA)
    out = tmp_path / "small"
    assert main(["resize", str(adapter), str(out), "--energy", "0.9"]) == 0
    printed = capsys.readouterr().out
    old = sum(f.stat().st_size for f in adapter.iterdir() if f.name.startswith("adapter_"))
    new = sum(f.stat().st_size for f in out.iterdir())
    assert f"{old:,} -> {new:,} bytes" in printed and new < old
    assert read_adapter(out).config.rank_pattern  # ranks 3 and 1
    ours = tiny_llama()
    lorakit.load_adapter(ours, out)
    old_layers = dict(lora_layers(model))
    for path, layer in lora_layers(ours):  # the top-k part of U diag(values) V^T, from a dense SVD
        u, s, vh = torch.linalg.svd(old_layers[path].delta_weight("default").detach().double())
        k = {Q0: 3, Q1: 1}[path]
        torch.testing.assert_close(layer.delta_weight("default").double(), u[:, :k] @ torch.diag(s[:k]) @ vh[:k],
                                   atol=1e-6, rtol=1e-5)  # float32 factors
    peft = PeftModel.from_pretrained(tiny_llama(), str(out)).eval()
    ids = token_ids()
    torch.testing.assert_close(logits(peft, ids), logits(ours, ids))
    assert not torch.allclose(logits(tiny_llama(), ids), logits(ours, ids), atol=1e-3)


def test_resize_to_the_full_rank_keeps_the_outputs(tmp_path):
    model, adapter = adapter_with_spectra(tmp_path, SPECTRA)
    assert main(["resize", str(adapter), str(tmp_path / "same"), "--rank", "8"]) == 0
    resized = tiny_llama()
    lorakit.load_adapter(resized, tmp_path / "same")
    ids = token_ids()
    torch.testing.assert_close(logits(resized, ids), logits(model, ids), atol=1e-5, rtol=1e-5)


def test_the_classification_head_beside_the_adapter_is_kept(tmp_path, capsys):
    """A pooled classifier's run saves its head as adapter_head.safetensors beside the factors (io/wrapped.py); a
    resized adapter without it cannot be evaluated or loaded (found resizing a real Rotten Tomatoes run)."""
    from safetensors.torch import load_file, save_file

    _, adapter = adapter_with_spectra(tmp_path, SPECTRA)
    head = {"classifier.weight": torch.randn(2, 64), "classifier.bias": torch.randn(2)}
    save_file(head, adapter / "adapter_head.safetensors")
    assert main(["resize", str(adapter), str(tmp_path / "small"), "--rank", "2"]) == 0
    copied = load_file(tmp_path / "small" / "adapter_head.safetensors")
    assert copied.keys() == head.keys() and all(torch.equal(copied[k], head[k]) for k in head)
    new = sum(f.stat().st_size for f in (tmp_path / "small").glob("adapter_*"))
    assert f"-> {new:,} bytes" in capsys.readouterr().out


@pytest.mark.parametrize(("options", "message"), [
    (["--rank", "0"], "--rank 0: expected a rank >= 1"),
    (["--energy", "1.5"], "energy=1.5: expected a share in (0, 1]"),
    (["--energy", "0"], "energy=0.0: expected a share in (0, 1]"),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, options, message):
    _, adapter = adapter_with_spectra(tmp_path, SPECTRA)
    assert main(["resize", str(adapter), str(tmp_path / "out"), *options]) == 2
    assert message in one_error_line(capsys, "resize")
    assert not (tmp_path / "out").exists()


def test_missing_adapter_is_one_line(tmp_path, capsys):
    assert main(["resize", str(tmp_path / "nope"), str(tmp_path / "out"), "--rank", "2"]) == 2
    assert "does not exist" in one_error_line(capsys, "resize")
    assert not (tmp_path / "out").exists()


def test_existing_out_needs_overwrite(tmp_path, capsys):
    _, adapter = adapter_with_spectra(tmp_path, SPECTRA)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["resize", str(adapter), str(out), "--rank", "2"]) == 2
    assert "--overwrite" in one_error_line(capsys, "resize")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["resize", str(adapter), str(out), "--rank", "2", "--overwrite"]) == 0
    assert read_adapter(out).config.r == 2


def test_dora_adapter_is_refused(tmp_path, capsys):
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, use_dora=True, target_modules=["q_proj"],
                                                  init_lora_weights=False))
    lorakit.save_adapter(model, tmp_path / "dora")
    assert main(["resize", str(tmp_path / "dora"), str(tmp_path / "out"), "--rank", "2"]) == 2
    assert "plain LoRA only" in one_error_line(capsys, "resize")
    assert not (tmp_path / "out").exists()


def test_bad_energy_in_inspect_is_one_line(tmp_path, capsys):
    _, adapter = adapter_with_spectra(tmp_path, SPECTRA)
    assert main(["inspect", str(adapter), "--no-plot", "--energy", "2"]) == 2
    assert "energy=2.0" in one_error_line(capsys, "inspect")
