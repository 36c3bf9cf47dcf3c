"""diffusers' LoRA key forms and metadata: the pure mapping, and the older forms read as diffusers reads them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.io.formats import diffusers_lora
from lorakit.io.formats.patterns import config_from_modules, module_values

PATH = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


@pytest.mark.parametrize(("key", "want"), [
    (f"unet.{PATH}.to_q.lora_A.weight", ("unet", f"{PATH}.to_q", "lora_A.weight")),
    (f"unet.{PATH}.to_q.lora_B.weight", ("unet", f"{PATH}.to_q", "lora_B.weight")),
    (f"unet.{PATH}.to_q.lora.down.weight", ("unet", f"{PATH}.to_q", "lora_A.weight")),
    (f"unet.{PATH}.to_out.0.lora.up.weight", ("unet", f"{PATH}.to_out.0", "lora_B.weight")),
    (f"unet.{PATH}.processor.to_out_lora.down.weight", ("unet", f"{PATH}.to_out.0", "lora_A.weight")),
    (f"unet.{PATH}.processor.to_k_lora.up.weight", ("unet", f"{PATH}.to_k", "lora_B.weight")),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight",
     ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", "lora_A.weight")),
    ("text_encoder_2.encoder.layers.1.mlp.fc1.alpha", ("text_encoder_2", "encoder.layers.1.mlp.fc1", "alpha")),
    ("transformer.blocks.0.attn.to_q.lora_magnitude_vector",
     ("transformer", "blocks.0.attn.to_q", "lora_magnitude_vector")),
])
def test_every_key_form_maps_to_its_module_and_role(key, want):
    assert diffusers_lora.split_key(key) == want
    assert diffusers_lora.is_diffusers_key(key)


def test_an_unknown_role_is_a_one_line_error():
    with pytest.raises(lorakit.AdapterFileError, match=r"unet\.x\.hada_w1_a: not a LoRA tensor") as e:
        diffusers_lora.split_key("unet.x.hada_w1_a")
    assert "\n" not in str(e.value)
    assert not diffusers_lora.is_diffusers_key("lora_unet_x.lora_down.weight")


def test_metadata_round_trips_and_peft_builds_the_same_config():
    peft = pytest.importorskip("peft")
    config = config_from_modules({"a.to_q": 4, "a.to_k": 4, "b.to_q": 2}, {"a.to_q": 8, "a.to_k": 8, "b.to_q": 3})
    encoded = diffusers_lora.encode_metadata({"unet": config.to_dict()})
    decoded = diffusers_lora.decode_metadata(encoded, "file")["unet"]
    assert lorakit.LoraConfig.from_peft_dict(decoded)[0] == config
    theirs = peft.LoraConfig(**decoded)  # what diffusers does with it
    assert (theirs.r, theirs.lora_alpha, theirs.rank_pattern, theirs.alpha_pattern) == (4, 8, {"b.to_q": 2},
                                                                                       {"b.to_q": 3})
    assert json.loads(encoded["lora_adapter_metadata"])["unet.r"] == 4


def test_config_from_modules_inverts_module_values():
    ranks, alphas = {"x.q": 8, "x.k": 8, "y.q": 4}, {"x.q": 16.0, "x.k": 16.0, "y.q": 2.5}
    config = config_from_modules(ranks, alphas)
    assert (config.r, config.lora_alpha) == (8, 16)
    assert module_values(config, sorted(ranks)) == ({p: ranks[p] for p in sorted(ranks)},
                                                    {p: alphas[p] for p in sorted(alphas)})
    rs = lorakit.LoraConfig(r=4, lora_alpha=4, use_rslora=True, target_modules=["q"])
    assert module_values(rs, ["q"])[1] == {"q": 4 * (4 / 4 ** 0.5)}  # rsLoRA's scaling folded into alpha


def test_older_key_forms_load_as_diffusers_loads_them(tmp_path):
    """diffusers' own layers (.lora.down / .lora.up) and old text-encoder patches (.lora_linear_layer): lorakit's
    loader and diffusers' load_lora_weights give the same model, which differs from the base."""
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from lorakit.diffusion.files import load_pipeline_adapter, save_pipeline_adapter
    from lorakit.diffusion.tiny import build_tiny_sd
    from tests.diffusion.lora_support import add_random_lora, assert_changed, assert_same_outputs, load, outputs

    folder = build_tiny_sd(tmp_path / "pipe")
    pipe = load(folder)
    add_random_lora(pipe, unet_config=lorakit.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_out.0"],
                                                         init_lora_weights=False))
    new = load_file(save_pipeline_adapter(pipe, tmp_path / "new"))
    old = {}
    for key, tensor in new.items():  # no config in an old file: scaling 1 (alpha = r) everywhere
        middle = ".lora." if key.startswith("unet.") else ".lora_linear_layer."
        old[key.replace(".lora_A.weight", f"{middle}down.weight").replace(".lora_B.weight", f"{middle}up.weight")] = \
            tensor
    (tmp_path / "old").mkdir()
    save_file(old, tmp_path / "old" / "pytorch_lora_weights.safetensors")
    ours, theirs = load(folder), load(folder)
    base = outputs(ours)
    load_pipeline_adapter(ours, tmp_path / "old")
    theirs.load_lora_weights(tmp_path / "old")
    got = outputs(ours)
    assert_changed(got, base, ["unet", "text_encoder"])
    assert_same_outputs(got, outputs(theirs))


def test_the_written_file_carries_each_components_config(tmp_path):
    pytest.importorskip("diffusers")
    from lorakit.diffusion.files import save_pipeline_adapter
    from lorakit.diffusion.tiny import build_tiny_sd
    from tests.diffusion.lora_support import add_random_lora, load

    pipe = load(build_tiny_sd(tmp_path / "pipe"))
    add_random_lora(pipe)
    file = save_pipeline_adapter(pipe, tmp_path / "lora")
    with safe_open(str(file), "pt") as handle:
        meta = json.loads(handle.metadata()["lora_adapter_metadata"])
        keys = set(handle.keys())
    assert (meta["unet.r"], meta["unet.lora_alpha"], meta["unet.rank_pattern"]) == (4, 6, {"attn2.to_k": 2})
    assert (meta["text_encoder.r"], meta["text_encoder.lora_alpha"]) == (2, 5)
    assert all(k.startswith(("unet.", "text_encoder.")) for k in keys)
    assert all(isinstance(t, torch.Tensor) for t in load_file(file).values())
