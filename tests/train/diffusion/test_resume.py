"""Exact resume of a text-to-image run: killed after a checkpoint and resumed, it ends with the same adapter (bit for
bit) as a run that was never interrupted; random flips, the VAE latent samples, the noise, the timesteps and LoRA
dropout included."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lorakit.train.hooks import TrainHook
from lorakit.train.run import train
from tests.train.diffusion.helpers import image_folder, t2i_config


class Kill(TrainHook):
    """Stops the run during optimizer step `at` (0-based), after the checkpoint of the step before."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, model, step: int) -> None:
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("cache_latents", [True, False])
def test_killed_and_resumed_equals_uninterrupted(tiny_sd, tmp_path, cache_latents):
    data = image_folder(tmp_path / "imgs", count=6)
    settings = dict(lora={"lora_dropout": 0.1},
                    diffusion={"random_flip": True, "center_crop": False, "noise_offset": 0.1,
                               "cache_latents": cache_latents},
                    training={"max_steps": 4, "save_every": 2, "grad_accum": 2, "batch_size": 1})
    train(t2i_config(tiny_sd, data, tmp_path / "whole", **settings))
    with pytest.raises(KeyboardInterrupt):
        train(t2i_config(tiny_sd, data, tmp_path / "cut", **settings), hooks=[Kill(at=2)])
    assert not (tmp_path / "cut" / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / "cut" / "checkpoints" / "step-00000002").is_dir()
    train(t2i_config(tiny_sd, data, tmp_path / "cut", **settings), resume=True)
    whole = load_file(tmp_path / "whole" / "pytorch_lora_weights.safetensors")
    resumed = load_file(tmp_path / "cut" / "pytorch_lora_weights.safetensors")
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    trained_b = [v for k, v in whole.items() if ".lora_B." in k]
    assert any(b.abs().max() > 0 for b in trained_b)  # it trained: B left zero


def test_a_different_seed_gives_a_different_adapter(tiny_sd, tmp_path):
    """The guard of the test above: the step draws do depend on the seed."""
    data = image_folder(tmp_path / "imgs", count=4)
    outs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        train(t2i_config(tiny_sd, data, out, training={"max_steps": 2, "seed": seed}))
        outs.append(load_file(out / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
