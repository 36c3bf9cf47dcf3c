"""`lorakit inspect ADAPTER`: ranks, parameter counts, sizes, and singular values of scaling * B @ A checked
against a dense SVD."""

from __future__ import annotations

import json

import torch

import lorakit
from lorakit.cli.inspect import update_singular_values
from lorakit.cli.main import main
from lorakit.inject import lora_layers
from tests.helpers import tiny_llama


def saved_adapter(tmp_path):
    model = tiny_llama()
    cfg = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                             rank_pattern={"layers.1.self_attn.v_proj": 2}, alpha_pattern={"v_proj": 3})
    lorakit.add_adapter(model, cfg)
    lorakit.save_adapter(model, tmp_path / "adapter")
    return model, tmp_path / "adapter"


def test_json_report_matches_the_model(tmp_path, capsys, monkeypatch):
    model, adapter = saved_adapter(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", str(adapter), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    layers = {entry["path"]: entry for entry in report["layers"]}
    live = dict(lora_layers(model))
    assert set(layers) == set(live)
    for path, layer in live.items():
        entry = layers[path]
        a, b = layer.lora_weights("default")
        assert entry["rank"] == layer.r["default"]
        assert entry["params"] == a.numel() + b.numel()
        dense = torch.linalg.svdvals(layer.delta_weight("default").double())[: entry["rank"]]  # independent path
        torch.testing.assert_close(torch.tensor(entry["singular_values"], dtype=torch.float64), dense)
    assert layers["model.layers.1.self_attn.v_proj"]["rank"] == 2
    assert report["size_bytes"] == sum(f.stat().st_size for f in adapter.glob("adapter_*"))
    assert report["parameters"] == sum(e["params"] for e in report["layers"])
    assert (tmp_path / "spectrum.png").stat().st_size > 1000


def test_table_and_plot_path(tmp_path, capsys):
    _, adapter = saved_adapter(tmp_path)
    assert main(["inspect", str(adapter), "--plot", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "4 adapted layers" in out and "model.layers.0.self_attn.q_proj" in out
    assert f"spectrum plot: {tmp_path / 's.png'}" in out
    assert (tmp_path / "s.png").is_file()


def test_singular_values_of_a_conv_shaped_update():
    a, b = torch.randn(3, 5, 2, 2), torch.randn(7, 3, 1, 1)  # conv: A (r, in, k, k), B (out, r, 1, 1)
    dense = torch.linalg.svdvals(0.5 * b.reshape(7, 3).double() @ a.reshape(3, -1).double())[:3]  # rank 3
    torch.testing.assert_close(update_singular_values(a, b, 0.5), dense)


def test_missing_adapter_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_adalora_adapters_show_their_kept_ranks(tmp_path, capsys, monkeypatch):
    from lorakit.variants import AdaLoraConfig

    model = tiny_llama()
    config = AdaLoraConfig(init_r=4, target_r=2, lora_alpha=6, target_modules=["q_proj"], init_lora_weights=False,
                           total_step=10)
    lorakit.add_adapter(model, config)
    layers = dict(lora_layers(model))
    keeps = dict(zip(layers, ([True, False, True, False], [False] * 4), strict=True))
    for path, keep in keeps.items():
        layers[path].apply_mask("default", torch.tensor(keep))
        config.rank_pattern[path] = keep
    lorakit.save_adapter(model, tmp_path / "ada")
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", str(tmp_path / "ada"), "--json"]) == 0
    report = {e["path"]: e for e in json.loads(capsys.readouterr().out)["layers"]}
    for path, keep in keeps.items():
        assert report[path]["rank"] == sum(keep)
        dense = torch.linalg.svdvals(layers[path].delta_weight("default").double())[: sum(keep)]
        torch.testing.assert_close(torch.tensor(report[path]["singular_values"], dtype=torch.float64), dense)
    assert main(["inspect", str(tmp_path / "ada"), "--no-plot"]) == 0
    assert "AdaLoRA: init_r=4 target_r=2; ranks kept: 2 in total" in capsys.readouterr().out
