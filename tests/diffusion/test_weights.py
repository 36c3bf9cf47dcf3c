"""Adapter strength in a pipeline (lorakit.diffusion.weights) against diffusers' own `set_adapters` on the SAME
files, monotone strength, fusing, and the saved plain pipeline."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' load_lora_weights needs it (test-only)

from lorakit.adapter_state import adapter_configs  # noqa: E402
from lorakit.diffusion.tiny import build_tiny_sd  # noqa: E402
from lorakit.diffusion.weights import fuse_adapters, save_plain_pipeline, set_adapter_weights  # noqa: E402
from lorakit.errors import AdapterError, MergeError  # noqa: E402
from lorakit.hf.pipelines import load_pipeline  # noqa: E402
from lorakit.inject import lora_layers  # noqa: E402
from tests.diffusion.pipeline_helpers import (  # noqa: E402
    image,
    load_into,
    text_output,
    unet_output,
    write_diffusers_lora,
)

# diffusers' second load_lora_weights into one pipeline: PEFT's note that the model now has several adapters
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("weights") / "sd")


@pytest.fixture(scope="module")
def files(sd, tmp_path_factory):
    """Two adapters: "a" on the UNet (r=4, alpha=8: scaling 2) and the text encoder (r=2, alpha=4); "b" on the
    UNet only (r=2, alpha=1: scaling 0.5)."""
    root = tmp_path_factory.mktemp("adapters")
    pipe = load_pipeline(sd)
    return {"a": write_diffusers_lora(pipe, root / "a", 1, 4, 8, text_rank=2, text_alpha=4),
            "b": write_diffusers_lora(pipe, root / "b", 2, 2, 1)}


def both(sd, files, names):
    """The same adapter files in two pipelines: one through diffusers + PEFT, one through lorakit."""
    reference, ours = load_pipeline(sd), load_pipeline(sd)
    for name in names:
        reference.load_lora_weights(files[name], adapter_name=name)
        load_into(ours, files[name], name)
    return reference, ours


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, 1.3])
def test_one_adapter_weight_matches_diffusers_set_adapters(sd, files, weight):
    reference, ours = both(sd, files, ["a"])
    reference.set_adapters(["a"], adapter_weights=[weight])
    set_adapter_weights(ours, {"a": weight})
    torch.testing.assert_close(unet_output(ours), unet_output(reference))
    torch.testing.assert_close(text_output(ours), text_output(reference))
    base = load_pipeline(sd)
    if weight:  # guard: the adapter really changes both components
        assert (unet_output(ours) - unet_output(base)).abs().max() > 1e-3
        assert (text_output(ours) - text_output(base)).abs().max() > 1e-3


def test_two_adapters_at_once_match_diffusers(sd, files):
    reference, ours = both(sd, files, ["a", "b"])
    reference.set_adapters(["a", "b"], adapter_weights=[0.7, 0.4])
    set_adapter_weights(ours, {"a": 0.7, "b": 0.4})
    torch.testing.assert_close(unet_output(ours), unet_output(reference))
    torch.testing.assert_close(text_output(ours), text_output(reference))
    only_a = load_pipeline(sd)
    load_into(only_a, files["a"], "a")
    set_adapter_weights(only_a, {"a": 0.7})
    assert (unet_output(ours) - unet_output(only_a)).abs().max() > 1e-4  # "b" takes part


def test_weights_set_again_do_not_compound(sd, files):
    _, ours = both(sd, files, ["a", "b"])
    set_adapter_weights(ours, {"a": 1.3, "b": 2.0})
    set_adapter_weights(ours, {"a": 0.5})
    _, fresh = both(sd, files, ["a"])
    set_adapter_weights(fresh, {"a": 0.5})
    torch.testing.assert_close(unet_output(ours), unet_output(fresh))
    layer = ours.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.scaling["a"] == pytest.approx(0.5 * 8 / 4) and layer.active_adapters == ["a"]


def test_unknown_adapter_is_one_error_naming_the_known_ones(sd, files):
    _, ours = both(sd, files, ["a"])
    with pytest.raises(AdapterError, match=r"no adapter named 'c'.*\['a'\]"):
        set_adapter_weights(ours, {"c": 1.0})


def test_outputs_move_away_from_the_base_monotonically(sd, files):
    base = load_pipeline(sd)
    base_unet, base_image = unet_output(base), image(base)
    _, ours = both(sd, files, ["a"])
    unet_dist, image_dist = [], []
    for weight in (0.0, 0.5, 1.0):
        set_adapter_weights(ours, {"a": weight})
        unet_dist.append((unet_output(ours) - base_unet).norm().item())
        image_dist.append((image(ours) - base_image).norm().item())
    assert unet_dist[0] == 0.0 and image_dist[0] == 0.0  # weight 0 is the base, exactly
    assert 0 < unet_dist[1] < unet_dist[2]
    assert 0 < image_dist[1] < image_dist[2]


def test_fused_pipeline_equals_unfused_and_has_no_lora_layers(sd, files):
    _, ours = both(sd, files, ["a", "b"])
    set_adapter_weights(ours, {"a": 0.8, "b": 1.2})
    unet_before, text_before, image_before = unet_output(ours), text_output(ours), image(ours)
    fuse_adapters(ours)
    assert not any(True for _ in lora_layers(ours.unet)) and not any(True for _ in lora_layers(ours.text_encoder))
    assert not adapter_configs(ours.unet)
    torch.testing.assert_close(unet_output(ours), unet_before)
    torch.testing.assert_close(text_output(ours), text_before)
    torch.testing.assert_close(image(ours), image_before)


def test_fuse_at_given_weights_equals_those_weights(sd, files):
    _, unfused = both(sd, files, ["a"])
    set_adapter_weights(unfused, {"a": 0.6})
    _, fused = both(sd, files, ["a"])
    fuse_adapters(fused, {"a": 0.6})
    torch.testing.assert_close(unet_output(fused), unet_output(unfused))


def test_fuse_refusing_nan_in_one_component_leaves_every_component_unfused(sd, files):
    _, ours = both(sd, files, ["a"])
    set_adapter_weights(ours, {"a": 1.0})
    unet_before = unet_output(ours)
    layer = next(layer for _, layer in lora_layers(ours.text_encoder))
    with torch.no_grad():
        layer.lora_B["a"].weight[0, 0] = float("nan")
    with pytest.raises(MergeError):
        fuse_adapters(ours)
    assert all(not layer.merged_adapters for _, layer in lora_layers(ours.unet))
    torch.testing.assert_close(unet_output(ours), unet_before)  # the UNet was merged, then given back


def test_saved_plain_pipeline_reloads_in_diffusers_with_the_same_images(sd, files, tmp_path):
    from safetensors import safe_open

    _, ours = both(sd, files, ["a"])
    fuse_adapters(ours, {"a": 1.0})
    expected = image(ours)
    out = save_plain_pipeline(ours, tmp_path / "plain")
    for weights in out.rglob("*.safetensors"):
        with safe_open(str(weights), "pt") as handle:
            assert not [k for k in handle.keys() if "lora" in k or "base_layer" in k], weights  # noqa: SIM118
    plain = diffusers.DiffusionPipeline.from_pretrained(out)
    plain.set_progress_bar_config(disable=True)
    assert not any("lora" in n for n, _ in plain.unet.named_modules())
    torch.testing.assert_close(image(plain), expected)
    assert (image(plain) - image(load_pipeline(sd))).abs().max() > 1e-3  # guard: the adapter is in it


def test_saving_a_pipeline_that_still_has_adapters_is_refused(sd, files, tmp_path):
    _, ours = both(sd, files, ["a"])
    with pytest.raises(AdapterError, match="fuse_adapters"):
        save_plain_pipeline(ours, tmp_path / "plain")
    assert not (tmp_path / "plain").exists()


def test_sdxl_weights_reach_both_text_encoders_as_in_diffusers(tmp_path):
    from lorakit.diffusion.tiny import build_tiny_sdxl

    xl = build_tiny_sdxl(tmp_path / "xl")
    lora = write_diffusers_lora(load_pipeline(xl), tmp_path / "xl-lora", 3, 4, 4, text_rank=2, text_alpha=4)
    reference, ours = load_pipeline(xl), load_pipeline(xl)
    reference.load_lora_weights(lora, adapter_name="a")
    reference.set_adapters(["a"], adapter_weights=[0.6])
    load_into(ours, lora, "a")
    set_adapter_weights(ours, {"a": 0.6})
    torch.testing.assert_close(unet_output(ours), unet_output(reference))
    base = load_pipeline(xl)
    for encoder in ("text_encoder", "text_encoder_2"):
        torch.testing.assert_close(text_output(ours, encoder), text_output(reference, encoder))
        assert (text_output(ours, encoder) - text_output(base, encoder)).abs().max() > 1e-3  # guard
