"""Delta-LoRA: W moves by λ·(s·B_{t+1}A_{t+1} − s·B_t·A_t) after each step; the merged export is W_T + s·B_T·A_T."""

import pytest
import torch
from torch import nn

import lorakit
from lorakit.errors import ConfigError
from lorakit.inject import lora_layers
from lorakit.layers.base import AdapterSpec
from lorakit.layers.conv import LoraConv
from lorakit.layers.embedding import LoraEmbedding
from lorakit.layers.linear import LoraLinear
from lorakit.variants import DeltaLoraConfig, DeltaLoraHook, hooks_for
from tests.helpers import logits, tiny_gpt2, tiny_llama, token_ids
from tests.variants.loop import train_steps


def one_layer_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        layer = LoraLinear(nn.Linear(6, 5))
    elif kind == "conv1d_hf":
        from transformers.pytorch_utils import Conv1D

        layer = LoraLinear(Conv1D(5, 6), fan_in_fan_out=True)
    elif kind == "embedding":
        layer = LoraEmbedding(nn.Embedding(7, 5))
    else:
        layer = LoraConv(nn.Conv2d(3, 5, 3))
    layer.base_layer.requires_grad_(False)
    layer.add_adapter("default", AdapterSpec(r=2, lora_alpha=6, init_lora_weights=False))
    layer.set_active(["default"])
    return nn.ModuleDict({"layer": layer})


@pytest.mark.parametrize("kind", ["linear", "conv1d_hf", "embedding", "conv2d"])
def test_one_step_moves_w_by_the_change_of_the_update(kind) -> None:
    model = one_layer_model(kind)
    layer = model["layer"]
    hook = DeltaLoraHook(model, DeltaLoraConfig(update_ratio=1.5, start_step=0))
    w0, delta0 = layer.base_weight.clone(), layer.delta_weight("default").detach().clone()
    hook.on_backward_end(model, 0)
    with torch.no_grad():  # stands in for optimizer.step()
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    hook.on_step_end(model, 0)
    delta1 = layer.delta_weight("default").detach()  # s·B1·A1 in W's layout
    torch.testing.assert_close(layer.base_weight, w0 + 1.5 * (delta1 - delta0))


def test_updates_telescope_and_wait_for_start_step() -> None:
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    hook = DeltaLoraHook(model, DeltaLoraConfig(update_ratio=2.0, start_step=3))
    w0 = {p: layer.base_weight.clone() for p, layer in lora_layers(model)}
    anchors = {}

    class Recorder:  # the adapter at the start of step 3, i.e. after three optimizer steps
        def on_backward_end(self, model, step):
            if step == 3:
                anchors.update({p: layer.delta_weight("default").detach().clone() for p, layer in lora_layers(model)})

        def extra_loss(self, model, step):
            return None

        def on_step_end(self, model, step):
            if step == 2:
                for p, layer in lora_layers(model):
                    torch.testing.assert_close(layer.base_weight, w0[p], rtol=0, atol=0)  # untouched before K

    train_steps(model, token_ids(), steps=7, hooks=[Recorder(), hook])
    for path, layer in lora_layers(model):
        expected = w0[path] + 2.0 * (layer.delta_weight("default").detach() - anchors[path])
        # four per-step float32 updates vs one telescoped sum: rounding differs by a few ulps
        torch.testing.assert_close(layer.base_weight, expected, rtol=1e-5, atol=1e-6)


def test_training_lowers_the_loss_and_exports_w_final_plus_update() -> None:
    model = tiny_gpt2()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]))
    hooks = hooks_for(model, {"delta_lora": {"update_ratio": 2.0, "start_step": 1}})
    assert [type(h) for h in hooks] == [DeltaLoraHook]
    w_start = {p: layer.base_weight.clone() for p, layer in lora_layers(model)}
    losses = train_steps(model, token_ids(batch=4, seq=16), steps=12, hooks=hooks, lr=2e-2)
    assert losses[-1] < 0.97 * losses[0]
    model.eval()
    finals = {p: (layer.base_weight.clone(), layer.delta_weight("default").detach()) for p, layer in lora_layers(model)}
    assert any(not torch.equal(w, w_start[p]) for p, (w, _) in finals.items())  # W did move
    expected = logits(model, token_ids())
    merged = lorakit.merge_and_unload(model)
    torch.testing.assert_close(logits(merged, token_ids()), expected)
    for path, (w_final, delta) in finals.items():
        torch.testing.assert_close(merged.get_submodule(path).weight, w_final + delta)


def test_resume_rebuilds_w_from_the_anchor() -> None:
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    hook = DeltaLoraHook(model, DeltaLoraConfig(start_step=0))
    train_steps(model, token_ids(), steps=4, hooks=[hook])
    fresh = tiny_llama()
    lorakit.add_adapter(fresh, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    with torch.no_grad():  # the trainer restores the adapter weights first
        for (_, new), (_, old) in zip(lora_layers(fresh), lora_layers(model), strict=True):
            new.lora_A["default"].weight.copy_(old.lora_A["default"].weight)
            new.lora_B["default"].weight.copy_(old.lora_B["default"].weight)
    DeltaLoraHook(fresh, DeltaLoraConfig(start_step=0)).load_state_dict(hook.state_dict())
    for (_, new), (_, old) in zip(lora_layers(fresh), lora_layers(model), strict=True):
        torch.testing.assert_close(new.base_weight, old.base_weight, rtol=1e-5, atol=1e-6)  # rounding, see above


def test_dora_adapters_and_bad_settings_are_refused() -> None:
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ConfigError, match="variant"):
        DeltaLoraHook(model)
    with pytest.raises(ConfigError, match="update_ratio"):
        DeltaLoraConfig(update_ratio=-1)
    with pytest.raises(ConfigError, match="unknown delta_lora key"):
        DeltaLoraConfig.from_dict({"ratio": 2})
