"""Delta-LoRA's saved adapter: a rank-2r LoRA on the ORIGINAL base that reproduces W_T + s·B_T·A_T."""

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

import lorakit
from lorakit.variants import DeltaLoraConfig, DeltaLoraHook
from lorakit.variants.delta_lora_export import delta_lora_export, save_delta_lora
from tests.helpers import logits, tiny_llama, token_ids
from tests.variants.loop import train_steps


def trained(config: lorakit.LoraConfig, start_step: int = 1, steps: int = 4):
    model = tiny_llama()
    lorakit.add_adapter(model, config)
    hook = DeltaLoraHook(model, DeltaLoraConfig(update_ratio=2.0, start_step=start_step))
    train_steps(model, token_ids(seq=12), steps, hooks=[hook], lr=2e-2)
    model.eval()
    return model, hook


@pytest.mark.parametrize("extra", [{}, {"use_rslora": True}, {"rank_pattern": {"v_proj": 2}, "alpha_pattern":
                                                                              {"q_proj": 3.0}}, {"lora_bias": True}])
def test_the_saved_adapter_on_a_fresh_base_is_the_delta_lora_model(tmp_path, extra):
    targets = ["q_proj", "v_proj"] + ([] if "lora_bias" in extra else ["embed_tokens"])  # embeddings have no bias
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets, **extra)
    model, hook = trained(config)
    assert hook.anchor, "W must have moved for this test to mean anything"
    ids = token_ids(seq=9, seed=3)
    want = logits(model, ids)
    save_delta_lora(model, tmp_path, hook)

    fresh = lorakit.load_adapter(tiny_llama(), tmp_path)  # the untouched W_0
    torch.testing.assert_close(logits(fresh, ids), want, rtol=1e-4, atol=1e-4)
    # and the plain adapter alone would NOT be that model: the fold is what carries the change of W
    plain = tmp_path / "plain"
    lorakit.save_adapter(model, plain)
    assert not torch.allclose(logits(lorakit.load_adapter(tiny_llama(), plain), ids), want, atol=1e-3)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    records = lorakit.read_adapter(tmp_path)[1]  # lorakit's records: in the weights' metadata
    assert saved["r"] == 8 and records["lorakit_delta_lora"]["trained_r"] == 4
    if "rank_pattern" in extra:
        assert saved["rank_pattern"] == {"v_proj": 4}


def test_merged_export_equals_w_t_plus_the_update(tmp_path):
    model, hook = trained(lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ids = token_ids(seq=9, seed=3)
    want = logits(model, ids)
    save_delta_lora(model, tmp_path, hook)
    merged = lorakit.merge_and_unload(lorakit.load_adapter(tiny_llama(), tmp_path))
    torch.testing.assert_close(logits(merged, ids), want, rtol=1e-4, atol=1e-4)
    # the dense formula, layer by layer: W_T + s·B_T·A_T
    fresh_merged = dict(merged.named_modules())
    for path, layer in hook.layers.items():
        dense = layer.base_weight + layer.delta_weight("default")
        torch.testing.assert_close(fresh_merged[path].weight, dense.detach(), rtol=1e-5, atol=1e-5)


def test_before_start_step_the_adapter_is_saved_as_trained(tmp_path):
    model, hook = trained(lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]), start_step=50)
    assert not hook.anchor
    config, tensors = delta_lora_export(model, hook)
    assert config.r == 4
    reference = lorakit.io.checkpoint.adapter_state_dict(model)
    assert tensors.keys() == reference.keys() and all(torch.equal(tensors[k], reference[k]) for k in tensors)


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 5, 3), act=nn.ReLU(), out=nn.Conv2d(5, 4, 1)))


def test_conv_layers_fold_too(tmp_path):
    model = conv_net()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=6, target_modules=["conv", "out"]))
    hook = DeltaLoraHook(model, DeltaLoraConfig(update_ratio=1.5, start_step=0))
    torch.manual_seed(1)
    for step in range(3):  # random "optimizer steps" on A and B, with the hook around each
        hook.on_backward_end(model, step)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
        hook.on_step_end(model, step)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = model(x)
    save_delta_lora(model, tmp_path, hook)
    fresh = lorakit.load_adapter(conv_net(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want, rtol=1e-4, atol=1e-4)


def test_peft_loads_the_folded_adapter_as_the_delta_lora_model(tmp_path):
    peft = pytest.importorskip("peft")
    model, hook = trained(lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ids = token_ids(seq=9, seed=3)
    save_delta_lora(model, tmp_path, hook)
    theirs = peft.PeftModel.from_pretrained(tiny_llama().eval(), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, ids), logits(model, ids), rtol=1e-4, atol=1e-4)
