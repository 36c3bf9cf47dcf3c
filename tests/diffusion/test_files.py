"""Pipeline adapters in diffusers' layout, both ways against the real diffusers (and PEFT, which it loads with):
lorakit's file in `pipe.load_lora_weights`, and diffusers' own file in lorakit's loader, give the same denoiser and
text-encoder outputs as the model they were saved from. Plus the loader's refusals and its all-or-nothing rule."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

import lorakit  # noqa: E402
from lorakit.diffusion.files import (  # noqa: E402
    load_pipeline_adapter,
    read_pipeline_adapter,
    save_pipeline_adapter,
    write_pipeline_adapter,
)
from lorakit.diffusion.tiny import build_tiny_sd, build_tiny_sdxl  # noqa: E402
from tests.diffusion.lora_support import (  # noqa: E402
    UNET_TARGETS,
    add_random_lora,
    assert_changed,
    assert_same_outputs,
    load,
    outputs,
)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "pipe")


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_lorakit_file_loads_in_diffusers_with_the_same_outputs(request, tmp_path, arch):
    folder = request.getfixturevalue(arch)
    pipe = load(folder)
    base = outputs(pipe)
    add_random_lora(pipe)  # alpha != r, rank_pattern, alpha_pattern, text-encoder LoRA
    want = outputs(pipe)
    assert_changed(want, base, list(want))
    written = save_pipeline_adapter(pipe, tmp_path / "lora")
    assert written.name == "pytorch_lora_weights.safetensors"
    theirs = load(folder)
    theirs.load_lora_weights(tmp_path / "lora")
    assert_same_outputs(outputs(theirs), want)


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_diffusers_file_loads_in_lorakit_with_the_same_outputs(request, tmp_path, arch):
    folder = request.getfixturevalue(arch)
    pipe = load(folder)
    torch.manual_seed(3)
    unet_config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=UNET_TARGETS, init_lora_weights=False,
                                  rank_pattern={"to_v": 2})
    text_config = peft.LoraConfig(r=2, lora_alpha=7, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    pipe.unet.add_adapter(unet_config)
    peft.inject_adapter_in_model(text_config, pipe.text_encoder)  # transformers' add_adapter wants PEFT >= 0.22
    want = outputs(pipe)
    state = peft.utils.get_peft_model_state_dict
    type(pipe).save_lora_weights(
        tmp_path / "theirs", unet_lora_layers=state(pipe.unet), text_encoder_lora_layers=state(pipe.text_encoder),
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict(),
    )
    ours = load(folder)
    base = outputs(ours)
    assert sorted(load_pipeline_adapter(ours, tmp_path / "theirs")) == ["text_encoder", "unet"]
    got = outputs(ours)
    assert_changed(got, base, ["unet", "text_encoder"])
    assert_same_outputs(got, want)
    to_v = next(m for n, m in ours.unet.named_modules() if n.endswith("attn1.to_v"))
    assert to_v.r == {"default": 2} and to_v.scaling == {"default": 6.0}  # rank_pattern: alpha 12 / rank 2


def test_diffusers_file_without_metadata_means_alpha_equals_rank(sd, tmp_path):
    """diffusers' rule for a file without LoRA configs (older trainers wrote none): scaling 1, rank from shapes."""
    pipe = load(sd)
    add_random_lora(pipe, text=False)
    file = save_pipeline_adapter(pipe, tmp_path / "lora")
    (tmp_path / "bare").mkdir()
    save_file(load_file(file), tmp_path / "bare" / file.name)  # the same tensors, no metadata
    theirs, ours = load(sd), load(sd)
    theirs.load_lora_weights(tmp_path / "bare")
    load_pipeline_adapter(ours, tmp_path / "bare")
    assert_same_outputs(outputs(ours), outputs(theirs))
    layer = ours.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    assert layer.r == {"default": 2} and layer.scaling == {"default": 1.0}


def test_peft_folders_round_trip(sd, tmp_path):
    pipe = load(sd)
    add_random_lora(pipe)
    want = outputs(pipe)
    folder = save_pipeline_adapter(pipe, tmp_path / "peft", format="peft")
    assert sorted(p.name for p in folder.iterdir()) == ["text_encoder", "unet"]
    config, _, tensors, _ = lorakit.read_adapter(folder / "unet")  # each folder is an ordinary PEFT adapter
    assert config.alpha_pattern == {"to_out.0": 3}
    assert tensors.keys() == lorakit.adapter_state_dict(pipe.unet).keys()
    ours = load(sd)
    assert read_pipeline_adapter(folder).format == "peft"
    load_pipeline_adapter(ours, folder)
    assert_same_outputs(outputs(ours), want, atol=0)


def test_adapters_load_side_by_side_in_the_pipelines_dtype(sd, tmp_path):
    pipe = load(sd)
    add_random_lora(pipe)
    file = save_pipeline_adapter(pipe, tmp_path / "lora")
    half = load(sd).to(torch.bfloat16)
    assert load_pipeline_adapter(half, file, "a") == load_pipeline_adapter(half, file, "b")
    to_q = half.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert sorted(to_q.r) == ["a", "b"] and to_q.lora_A["b"].weight.dtype == torch.bfloat16
    assert torch.equal(to_q.lora_A["a"].weight, to_q.lora_A["b"].weight)
    with pytest.raises(lorakit.AdapterFileError, match="already has an adapter named 'a'"):
        load_pipeline_adapter(half, file, "a")


def test_a_key_that_matches_no_module_is_refused_and_nothing_stays_loaded(sd, tmp_path):
    pipe = load(sd)
    add_random_lora(pipe)
    adapter = read_pipeline_adapter(save_pipeline_adapter(pipe, tmp_path / "lora"))
    unet = adapter.components["unet"]
    unet.tensors["mid_block.attentions.0.proj_zz.lora_A.weight"] = torch.ones(4, 32)
    unet.tensors["mid_block.attentions.0.proj_zz.lora_B.weight"] = torch.ones(32, 4)
    bad = write_pipeline_adapter(adapter, tmp_path / "bad", "diffusers")
    target = load(sd)
    before = outputs(target)
    with pytest.raises(lorakit.AdapterFileError, match=r"mid_block\.attentions\.0\.proj_zz.* matches no module") as e:
        load_pipeline_adapter(target, bad)
    assert "\n" not in str(e.value)
    for module in (target.unet, target.text_encoder):
        assert lorakit.list_adapters(module) == []
    assert_same_outputs(outputs(target), before, atol=0)


def test_a_failure_in_the_second_component_rolls_back_the_first(sd, tmp_path):
    pipe = load(sd)
    add_random_lora(pipe)
    adapter = read_pipeline_adapter(save_pipeline_adapter(pipe, tmp_path / "lora"))
    key = next(k for k in adapter.components["unet"].tensors if k.endswith("lora_B.weight"))
    adapter.components["unet"].tensors[key] = torch.zeros(3, 3)  # a shape no layer takes: fails after text_encoder
    target = load(sd)
    with pytest.raises(lorakit.AdapterFileError, match="lora_B is"):
        load_pipeline_adapter(target, adapter)
    assert lorakit.list_adapters(target.text_encoder) == [] and lorakit.list_adapters(target.unet) == []


def test_non_finite_values_are_refused_at_load(sd, tmp_path):
    pipe = load(sd)
    add_random_lora(pipe, text=False)
    file = save_pipeline_adapter(pipe, tmp_path / "lora")
    tensors = load_file(file)
    next(t for k, t in tensors.items() if k.endswith("lora_B.weight"))[0, 0] = float("inf")
    save_file(tensors, file)
    with pytest.raises(lorakit.AdapterFileError, match="NaN or Inf") as e:
        load_pipeline_adapter(load(sd), tmp_path / "lora")
    assert "\n" not in str(e.value)


def test_unknown_layouts_and_missing_components_are_one_line_errors(sd, sdxl, tmp_path):
    save_file({"model.layers.0.weight": torch.ones(2)}, tmp_path / "other.safetensors")
    with pytest.raises(lorakit.AdapterFileError, match="not a LoRA layout lorakit reads"):
        read_pipeline_adapter(tmp_path / "other.safetensors")
    with pytest.raises(lorakit.AdapterFileError, match="does not exist"):
        read_pipeline_adapter(tmp_path / "missing")
    xl = load(sdxl)
    add_random_lora(xl)
    file = save_pipeline_adapter(xl, tmp_path / "xl")
    with pytest.raises(lorakit.AdapterFileError, match="text_encoder_2, which this pipeline does not have"):
        load_pipeline_adapter(load(sd), file)


def test_saving_an_adapter_no_component_has_is_refused(sd, tmp_path):
    with pytest.raises(lorakit.AdapterError, match="no component of this pipeline has an adapter named 'default'"):
        save_pipeline_adapter(load(sd), tmp_path / "lora")
    assert not (tmp_path / "lora").exists()
