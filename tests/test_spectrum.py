"""The spectrum plot's grouping (module type, numeric depth order) for a 32-layer all-linear LLM, and the files the
plot and a LoRA run write."""

from __future__ import annotations

import json
import random

import pytest

from lorakit.spectrum import LayerInfo, depth_key, group_by_module_type, module_type, plot_spectra
from lorakit.train.run import train
from tests.train.runs import config_of, make_run

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


def llama_paths(layers: int = 32) -> list[str]:
    """Every linear layer of a Llama-style model: 7 per block."""
    return [f"base_model.model.model.layers.{i}.{'self_attn' if name in ATTENTION else 'mlp'}.{name}"
            for i in range(layers) for name in ATTENTION + MLP]


def fake_infos(paths: list[str], rank: int = 8) -> list[LayerInfo]:
    rng = random.Random(0)
    return [LayerInfo(p, rank, 0, 2.0, sorted((rng.random() for _ in range(rank)), reverse=True)) for p in paths]


@pytest.mark.parametrize(("path", "kind", "depth"), [
    ("model.layers.12.self_attn.q_proj", "self_attn.q_proj", (12,)),
    ("encoder.block.3.layer.0.SelfAttention.q", "SelfAttention.q", (3, 0)),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "attn1.to_q", (1, 0, 0)),
    ("lm_head", "lm_head", ()),
    ("bert.pooler.dense", "pooler.dense", ()),
    ("transformer.h.2.attn.c_attn", "attn.c_attn", (2,)),
])
def test_module_type_and_depth(path, kind, depth):
    assert module_type(path) == kind and depth_key(path) == depth


def test_a_32_layer_model_groups_into_seven_types_of_32_layers_in_depth_order():
    paths = llama_paths()
    infos = fake_infos(paths)
    random.Random(1).shuffle(infos)  # the grouping must not rely on the input order
    groups = group_by_module_type(infos)
    assert sorted(groups) == sorted(ATTENTION + MLP)
    for name, layers in groups.items():
        assert [i.path.split(".")[4] for i in layers] == [str(d) for d in range(32)], name  # 2 before 10
        assert {module_type(i.path).rsplit(".", 1)[-1] for i in layers} == {name}
    assert sum(len(g) for g in groups.values()) == 224


def test_the_plot_of_224_layers_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_spectra(fake_infos(llama_paths()), tmp_path / "s.png", title="a 32-layer model")
    assert path == tmp_path / "s.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]  # no temporary file left


def test_layers_of_rank_zero_only_give_no_plot(tmp_path):
    assert plot_spectra([LayerInfo("a.0.q", 0, 0, 1.0, [])], tmp_path / "s.png") is None
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize(("method", "spectrum"), [("lora", True), ("full", False)])
def test_a_run_with_plot_writes_curves_and_for_lora_the_spectrum_next_to_the_adapter(tmp_path, method, spectrum):
    pytest.importorskip("matplotlib")
    cfg = config_of(make_run(tmp_path, "causal"), "training.max_steps=2", "output.plot=true",
                    f"training.method={method}", "output.run_name=colors")
    out = train(cfg).output_dir
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "curves.png").is_file() and summary["plot"] == str(out / "curves.png")
    assert (out / "spectrum.png").is_file() == spectrum
    assert summary.get("spectrum") == (str(out / "spectrum.png") if spectrum else None)


def test_bert_layers_that_all_end_in_dense_are_kept_apart():
    paths = [f"bert.encoder.layer.{i}.{kind}" for i in range(3)
             for kind in ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")]
    groups = group_by_module_type(fake_infos([*paths, "bert.pooler.dense"]))
    assert {name: len(layers) for name, layers in groups.items()} == {
        "query": 3, "attention.output.dense": 3, "intermediate.dense": 3, "output.dense": 3, "pooler.dense": 1}
