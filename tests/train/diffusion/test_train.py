"""Text-to-image LoRA training on tiny pipelines: the loss goes down, the run folder is complete, the adapter loads
in diffusers with the same outputs, and the text encoder trains at its own learning rate."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lorakit.train.diffusion.trainer import DiffusionTrainer
from lorakit.train.run import train
from tests.train.diffusion.helpers import image_folder, t2i_config


def test_a_short_run_lowers_the_denoising_loss_at_fixed_noise(tiny_sd, tmp_path):
    data = image_folder(tmp_path / "imgs", count=8)
    cfg = t2i_config(tiny_sd, data, tmp_path / "out", data_extra={"validation_split": 0.25},
                     training={"max_steps": 20})
    trainer = DiffusionTrainer(cfg)
    before = trainer.evaluate()["loss"]
    assert trainer.evaluate()["loss"] == before  # fixed noise and timesteps: the same weights, the same number
    trainer.train()
    after = trainer.evaluate()["loss"]
    assert after < 0.95 * before, (before, after)


def test_the_run_folder_and_the_adapter_in_diffusers_layout(tiny_sd, tmp_path):
    data = image_folder(tmp_path / "imgs", count=4)
    out = tmp_path / "out"
    result = train(t2i_config(tiny_sd, data, out, training={"max_steps": 2, "save_every": 1, "keep_checkpoints": 1}))
    names = {p.name for p in out.iterdir()}
    assert {"pytorch_lora_weights.safetensors", "train_config.yaml", "metrics.jsonl", "summary.json",
            "checkpoints"} <= names
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    tensors = load_file(out / "pytorch_lora_weights.safetensors")
    assert tensors and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in tensors)
    assert any(".attn2.to_k." in k for k in tensors)  # the default targets: to_q / to_k / to_v / to_out.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["adapter_bytes"] > 0 and math.isfinite(summary["final_train_loss"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert result.summary["prediction_type"] == "epsilon"


def unet_output(unet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 16, 16, generator=g)
    context = torch.randn(1, 16, unet.config.cross_attention_dim, generator=g)
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 32, generator=g),
                                      "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
    with torch.no_grad():
        return unet(sample, torch.tensor([400]), encoder_hidden_states=context, **extra).sample


def test_sdxl_trains_and_its_adapter_loads_in_diffusers_with_the_same_outputs(tiny_sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    data = image_folder(tmp_path / "imgs", count=4)
    out = tmp_path / "out"
    trainer = DiffusionTrainer(t2i_config(tiny_sdxl, data, out, training={"max_steps": 3, "lr": 5e-2},
                                          diffusion={"random_flip": True}))
    result = trainer.train()
    assert math.isfinite(result.summary["final_train_loss"])
    trainer.raw.eval()
    ours = unet_output(trainer.pipe.unet)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    base = unet_output(pipe.unet)
    pipe.load_lora_weights(out)
    theirs = unet_output(pipe.unet)
    assert (ours - base).abs().max() > 1e-4  # the adapter changed the outputs ...
    torch.testing.assert_close(theirs, ours)  # ... and diffusers' load gives the same


def test_the_text_encoder_trains_at_its_own_learning_rate(tiny_sd, tmp_path):
    data = image_folder(tmp_path / "imgs", count=4)
    out = tmp_path / "out"
    trainer = DiffusionTrainer(t2i_config(tiny_sd, data, out, training={"max_steps": 1, "lr": 1e-3},
                                          diffusion={"train_text_encoder": True, "text_encoder_lr": 1e-5}))
    rates = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert {name: lr for name, lr in rates.items() if not name.startswith("text_encoder")} == {
        "lora_A_no_decay": 1e-3, "lora_B_no_decay": 1e-3}
    assert {name: lr for name, lr in rates.items() if name.startswith("text_encoder")} == {
        "text_encoder_lora_A_no_decay": pytest.approx(1e-5), "text_encoder_lora_B_no_decay": pytest.approx(1e-5)}
    text_params = [p for n, p in trainer.raw.named_parameters() if n.startswith("text_encoder.") and p.requires_grad]
    assert text_params and all(".lora_" in n for n, p in trainer.raw.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in trainer.pipe.vae.parameters())
    trainer.train()
    keys = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("text_encoder.") and ".q_proj." in k for k in keys)


def test_v_prediction_with_min_snr_trains(tiny_sd_v, tmp_path):
    data = image_folder(tmp_path / "imgs", count=4)
    trainer = DiffusionTrainer(t2i_config(tiny_sd_v, data, tmp_path / "out", training={"max_steps": 2},
                                          diffusion={"snr_gamma": 5.0, "cache_latents": False}))
    assert trainer.prediction_type == "v_prediction"
    result = trainer.train()
    assert math.isfinite(result.summary["final_train_loss"])


def test_named_conv_layers_train_and_load_in_diffusers(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    data = image_folder(tmp_path / "imgs", count=2)
    out = tmp_path / "out"
    trainer = DiffusionTrainer(t2i_config(tiny_sd, data, out, training={"max_steps": 2, "lr": 5e-2},
                                          lora={"target_modules": ["to_q", "conv1", "conv2"]}))
    trainer.train()
    keys = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(".resnets.0.conv1.lora_A." in k for k in keys)
    trainer.raw.eval()
    ours = unet_output(trainer.pipe.unet)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.load_lora_weights(out)
    torch.testing.assert_close(unet_output(pipe.unet), ours)


def test_a_non_finite_loss_stops_the_run_with_the_one_line_error(tiny_sd, tmp_path):
    from lorakit.train.trainer import NonFiniteLossError

    data = image_folder(tmp_path / "imgs", count=2)
    trainer = DiffusionTrainer(t2i_config(tiny_sd, data, tmp_path / "out", training={"max_steps": 2}))
    param = next(p for n, p in trainer.raw.named_parameters() if ".lora_A." in n)
    with torch.no_grad():
        param.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"training stopped at step 1: the loss is nan") as info:
        trainer.train()
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()


def test_a_bfloat16_base_trains_with_float32_adapters(tiny_sd, tmp_path):
    data = image_folder(tmp_path / "imgs", count=2)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = t2i_config(tiny_sd, data, tmp_path / dtype, training={"max_steps": 1})
        cfg.model.dtype = dtype
        runs[dtype] = DiffusionTrainer(cfg)
    low = runs["bfloat16"]
    assert low.pipe.unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in low.raw.parameters() if p.requires_grad)
    losses = {dtype: trainer.train().summary["final_train_loss"] for dtype, trainer in runs.items()}
    # the same first step (same draws, B = 0): bf16 keeps about 3 significant digits of the float32 loss
    assert math.isfinite(losses["bfloat16"]) and losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)


def test_a_validation_folder_is_the_held_out_set(tiny_sd, tmp_path):
    data = image_folder(tmp_path / "imgs", count=4)
    held = image_folder(tmp_path / "held", count=3, colour=(20, 200, 20), caption="a green square")
    trainer = DiffusionTrainer(t2i_config(tiny_sd, data, tmp_path / "out",
                                          data_extra={"validation_file": str(held)}))
    assert (len(trainer.train_set), len(trainer.val_set)) == (4, 3)
    assert {item.example.caption for item in trainer.val_set} == {"a green square"}
    assert trainer.evaluate()["loss"] > 0
