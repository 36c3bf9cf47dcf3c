"""kohya / A1111 files: names back to module paths, an exact round trip, LoCon convolutions against the dense
formula, and lorakit's kohya file in diffusers' own kohya reader (an independent implementation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.io.formats import kohya

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from lorakit.diffusion.files import load_pipeline_adapter, read_pipeline_adapter, save_pipeline_adapter  # noqa: E402
from lorakit.diffusion.tiny import build_tiny_sd, build_tiny_sdxl  # noqa: E402
from lorakit.inject import iter_candidates  # noqa: E402
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
def test_every_adaptable_module_name_is_guessed_back_without_the_pipeline(request, arch):
    """Against the real module names of diffusers' UNets and CLIP text encoders (with CLIP's text_model level)."""
    pipe = load(request.getfixturevalue(arch))
    for name, prefix in (("unet", ""), ("text_encoder", "text_model.")):
        module = getattr(pipe, name)
        paths = [p for p, m in iter_candidates(module) if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        assert len(paths) > 10
        for path in paths:
            assert kohya.guess_path((prefix + path).replace(".", "_")) == prefix + path


def test_names_that_are_ambiguous_or_unknown_are_refused():
    assert kohya.name_map(["a.b_c", "a_b.c", "d"], text_encoder=False) == {"a_b_c": None, "d": "d"}
    assert kohya.guess_path("down_blocks_0_mystery_layer") is None
    for key, what in (("lora_unet_x.hada_w1_a", "LoHa"), ("lora_unet_x.lora_mid.weight", "Tucker")):
        with pytest.raises(lorakit.AdapterFileError, match=what) as e:
            kohya.split_key(key, "f.safetensors")
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_round_trip_is_exact_and_keeps_scaling_and_metadata(request, tmp_path, arch):
    pipe = load(request.getfixturevalue(arch))
    add_random_lora(pipe)
    lorakit.add_adapter(pipe.unet, lorakit.LoraConfig(r=4, lora_alpha=4, use_rslora=True, target_modules=["proj_in"],
                                                      init_lora_weights=False), "rs")
    for name in ("default", "rs"):
        file = save_pipeline_adapter(pipe, tmp_path / name, name, format="kohya")
        with safe_open(str(file), "pt") as handle:
            meta, keys = handle.metadata(), list(handle.keys())
        assert meta["ss_network_module"] == "networks.lora"
        assert meta["ss_base_model_version"] == ("sdxl_base_v1-0" if arch == "sdxl" else "sd_v1")
        te = ("lora_te1_", "lora_te2_") if arch == "sdxl" else ("lora_te_",)
        assert all(k.startswith(("lora_unet_", *te)) for k in keys)
        adapter = read_pipeline_adapter(file, base=pipe)
        assert adapter.format == "kohya" and adapter.metadata["ss_network_dim"] == meta["ss_network_dim"]
        for component, part in adapter.components.items():
            module = getattr(pipe, component)
            state = lorakit.adapter_state_dict(module, name)
            saved = {k.removeprefix("base_model.model."): t for k, t in state.items()}
            assert part.tensors.keys() == saved.keys()
            assert all(torch.equal(part.tensors[k], saved[k]) for k in saved)
            for path in {k.rsplit(".lora_", 1)[0] for k in saved}:
                assert part.config.scaling_for(path) == pytest.approx(module.get_submodule(path).scaling[name])
        again = save_pipeline_adapter(pipe, tmp_path / f"{name}-again.safetensors", name, format="kohya")
        assert read_pipeline_adapter(again).metadata["ss_network_alpha"] == meta["ss_network_alpha"]


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_lorakit_kohya_file_loads_in_diffusers_with_the_same_outputs(request, tmp_path, arch):
    folder = request.getfixturevalue(arch)
    pipe = load(folder)
    # one alpha for the whole UNet: diffusers 0.42 mis-keys a kohya file's per-module UNet alphas (its alpha_pattern
    # keeps ".processor.to_out_lora.down.weight" and PEFT ignores it); lorakit's reading of those is tested above
    add_random_lora(pipe, unet_config=lorakit.LoraConfig(r=4, lora_alpha=6, target_modules=UNET_TARGETS,
                                                         init_lora_weights=False, rank_pattern={"attn2.to_k": 2}))
    want = outputs(pipe)
    file = save_pipeline_adapter(pipe, tmp_path / "lora", format="kohya")
    theirs = load(folder)
    theirs.load_lora_weights(file)  # diffusers converts kohya names itself
    assert_same_outputs(outputs(theirs), want)


def _locon_file(pipe, path, r: int = 2, alpha: float | list[float] = 3.0
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A kohya LoCon file written by hand: 3x3 convs (conv_in, a resnet's conv1), a 1x1 conv and a linear; `alpha`
    one for all, or one per module in that order."""
    torch.manual_seed(5)
    modules = ["conv_in", "down_blocks.0.resnets.0.conv1", "down_blocks.0.attentions.0.proj_in",
               "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    factors, tensors = {}, {}
    alphas = alpha if isinstance(alpha, list) else [alpha] * len(modules)
    for module_path, module_alpha in zip(modules, alphas, strict=True):
        weight = pipe.unet.get_submodule(module_path).weight  # (out, in, kh, kw) or (out, in)
        down = torch.randn(r, *weight.shape[1:]) * 0.3
        up = torch.randn(weight.shape[0], r, *([1, 1] if weight.dim() == 4 else [])) * 0.3
        factors[module_path] = (down, up)
        name = "lora_unet_" + module_path.replace(".", "_")
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": torch.tensor(module_alpha)}
    save_file(tensors, path, metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(r)})
    return factors


def test_locon_convolutions_equal_the_dense_formula(sd, tmp_path):
    pipe = load(sd)
    base = outputs(pipe)
    r, alpha = 2, 3.0
    factors = _locon_file(pipe, tmp_path / "locon.safetensors", r, alpha)
    load_pipeline_adapter(pipe, tmp_path / "locon.safetensors")
    dense = load(sd)  # W + alpha / r * up @ down, computed here by hand
    with torch.no_grad():
        for module_path, (down, up) in factors.items():
            weight = dense.unet.get_submodule(module_path).weight
            weight += (alpha / r * up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    x = torch.randn(1, 4, 16, 16)
    conv_in = dense.unet.conv_in
    with torch.no_grad():
        assert torch.allclose(pipe.unet.conv_in(x), F.conv2d(x, conv_in.weight, conv_in.bias, padding=1), atol=1e-5)
    got = outputs(pipe)
    assert_changed(got, base, ["unet"])
    assert_same_outputs(got, outputs(dense))
    theirs = load(sd)
    theirs.load_lora_weights(tmp_path / "locon.safetensors")
    assert_same_outputs(outputs(theirs), got)


def test_each_module_keeps_its_own_alpha(sd, tmp_path):
    """kohya files may give every module its own alpha; each module's scaling is its alpha / r (diffusers 0.42 applies
    one alpha to the whole UNet here, so the reference is the dense formula alone)."""
    pipe = load(sd)
    r, alphas = 2, [1.0, 3.0, 6.0, 0.5]
    factors = _locon_file(pipe, tmp_path / "alphas.safetensors", r, alphas)
    load_pipeline_adapter(pipe, tmp_path / "alphas.safetensors")
    dense = load(sd)
    with torch.no_grad():
        for (module_path, (down, up)), alpha in zip(factors.items(), alphas, strict=True):
            weight = dense.unet.get_submodule(module_path).weight
            weight += (alpha / r * up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    assert_same_outputs(outputs(pipe), outputs(dense))


def test_a_kohya_name_the_pipeline_lacks_is_refused_in_one_line(sd, tmp_path):
    pipe = load(sd)
    save_file({"lora_unet_down_blocks_0_nothing_here.lora_down.weight": torch.ones(2, 4),
               "lora_unet_down_blocks_0_nothing_here.lora_up.weight": torch.ones(4, 2)}, tmp_path / "bad.safetensors")
    with pytest.raises(lorakit.AdapterFileError, match="lora_unet_down_blocks_0_nothing_here matches no module") as e:
        load_pipeline_adapter(pipe, tmp_path / "bad.safetensors")
    assert "\n" not in str(e.value) and lorakit.list_adapters(pipe.unet) == []
    with pytest.raises(lorakit.AdapterFileError, match="pass the pipeline"):
        read_pipeline_adapter(tmp_path / "bad.safetensors")


def test_sdxl_files_with_ldm_unet_names_load_as_in_diffusers(sdxl, tmp_path):
    """sd-scripts' SDXL files name UNet blocks input_blocks / middle_block / output_blocks. The file here is lorakit's
    kohya file renamed through lorakit's block table; diffusers' own SGM converter reading it back to the model it
    came from checks that table independently."""
    from lorakit.io.formats import kohya_ldm

    pipe = load(sdxl)
    add_random_lora(pipe, unet_config=lorakit.LoraConfig(  # one UNet alpha: see the diffusers note above
        r=4, lora_alpha=6, init_lora_weights=False, target_modules=[*UNET_TARGETS, "proj_in", "conv1", "conv2"]))
    want = outputs(pipe)
    diffusers_names = load_file(save_pipeline_adapter(pipe, tmp_path / "lora", format="kohya"))
    to_ldm = {block.replace(".", "_"): ldm for ldm, block in kohya_ldm.block_table(pipe.unet).items()}
    inner = {v: k for k, v in kohya_ldm.RESNET_NAMES.items()}
    renamed = {}
    for key, tensor in diffusers_names.items():
        stem, _, role = key.partition(".")
        for block, ldm in sorted(to_ldm.items(), key=lambda item: -len(item[0])):
            if stem.startswith(f"lora_unet_{block}_"):
                rest = stem[len(f"lora_unet_{block}_"):]
                stem = f"lora_unet_{ldm}_{inner.get(rest, rest)}"
                break
        renamed[f"{stem}.{role}"] = tensor
    assert any(k.startswith("lora_unet_input_blocks_") for k in renamed)
    assert any(k.startswith("lora_unet_output_blocks_") for k in renamed)
    assert any("_in_layers_2." in k for k in renamed) and any("_out_layers_3." in k for k in renamed)
    save_file(renamed, tmp_path / "ldm.safetensors")
    ours, theirs = load(sdxl), load(sdxl)
    load_pipeline_adapter(ours, tmp_path / "ldm.safetensors")
    theirs.load_lora_weights(tmp_path / "ldm.safetensors")
    assert_same_outputs(outputs(ours), want)
    assert_same_outputs(outputs(theirs), want)
    with pytest.raises(lorakit.AdapterFileError, match=r"original LDM UNet names.*--base PIPELINE"):
        read_pipeline_adapter(tmp_path / "ldm.safetensors")
