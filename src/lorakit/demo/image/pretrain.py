"""The demo's base model: a tiny Stable Diffusion pipeline built from configs (lorakit.diffusion.tiny) and
pre-trained here on generated shapes in the OLD colours only, so that the LoRA has something new to teach.

Two stages, as Stable Diffusion itself was made:
  1. the VAE as an autoencoder on pictures in EVERY colour, green included: it is the generic image codec (SD's
     VAE also encodes colours its UNet was never taught to draw; one that cannot decode green would leave the
     LoRA nothing to reach). Pixel MSE plus a small KL term; then the latents' spread sets `scaling_factor`, so
     that scaled latents have unit variance as the noise schedule expects;
  2. the UNet and the text encoder together on the denoising loss, on the OLD colours only, with 10% of captions
     emptied so that classifier-free guidance works at generation time. The pipeline predicts v (v-prediction, as
     SD 2.x does), not the noise: at high noise levels, where a picture's colour is decided, the noise target is
     almost the noisy input itself and a wrong colour costs nearly nothing, so neither pre-training nor the LoRA
     would learn colours well from it; the v target is mostly the clean latent there.

The result is a normal pipeline folder, cached under $LORAKIT_CACHE/demo-image/<key> (default ~/.cache/lorakit),
the key a hash of the settings: a second demo run loads it instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lorakit.demo.image import shapes

PRETRAIN_VERSION = "2"  # bumped when the recipe changes, so old cached pipelines are not reused


@dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    image_size: int = 32  # pixels; the VAE halves it twice, so latents are 8 x 8
    channels: tuple[int, ...] = (32, 64)  # UNet block widths
    vae_channels: tuple[int, ...] = (8, 16, 32)  # three VAE levels: 4x down-sampling
    images: int = 2048  # generated pictures, each colour and shape about equally often
    batch_size: int = 16
    vae_steps: int = 500
    vae_lr: float = 3e-3
    kl_weight: float = 1e-6  # small: reconstructions first, latents only kept from drifting
    unet_steps: int = 800
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1  # share of empty captions: the unconditional branch of guidance

    @property
    def sample_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def cache_root() -> Path:
    return Path(os.environ.get("LORAKIT_CACHE") or Path.home() / ".cache" / "lorakit").expanduser() / "demo-image"


def cache_key(settings: PretrainSettings) -> str:
    text = json.dumps({"version": PRETRAIN_VERSION, **asdict(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pretrained_pipeline(settings: PretrainSettings, say: Callable[[str], None] = print) -> tuple[Path, bool]:
    """The pre-trained pipeline folder for `settings` (made on the first call), and whether it came from the cache."""
    from lorakit.io.atomic import atomic_directory, recover_directory

    target = cache_root() / cache_key(settings)
    recover_directory(target)
    if (target / "model_index.json").is_file():
        return target, True
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as folder:
        pretrain(folder, settings, say)
    return target, False


def pretrain(folder: Path, settings: PretrainSettings, say: Callable[[str], None] = print) -> None:
    """Build the tiny pipeline in `folder`, pre-train it in place and save it there."""
    from lorakit.diffusion.tiny import build_tiny_sd
    from lorakit.hf.pipelines import load_pipeline, quiet

    with quiet():  # no "writing shards" bars
        build_tiny_sd(folder, words=shapes.WORDS, seed=settings.seed, channels=settings.channels,
                      vae_channels=settings.vae_channels, sample_size=settings.sample_size,
                      prediction_type="v_prediction")
    pipe = load_pipeline(folder)
    every = shapes.sample(tuple(shapes.COLOURS), settings.images, settings.image_size, settings.seed + 100)
    pairs = shapes.sample(shapes.OLD_COLOURS, settings.images, settings.image_size, settings.seed)
    pixels = torch.stack([to_tensor(image) for image, _ in pairs])  # (images, 3, size, size) in [-1, 1]
    captions = [text for _, text in pairs]
    torch.manual_seed(settings.seed)
    train_vae(pipe.vae, torch.stack([to_tensor(image) for image, _ in every]), settings, say)
    latents = encode(pipe.vae, pixels)
    train_denoiser(pipe, latents, captions, settings, say)
    with quiet():
        pipe.save_pretrained(folder)


def to_tensor(image) -> torch.Tensor:
    import numpy as np

    array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())
    return array.permute(2, 0, 1) / 127.5 - 1.0


class Progress:
    """One line per tenth of the steps, with the mean loss since the last line."""

    def __init__(self, name: str, steps: int, say: Callable[[str], None]) -> None:
        self.name, self.steps, self.say = name, steps, say
        self.every, self.losses, self.t0 = max(1, steps // 10), [], time.perf_counter()

    def step(self, i: int, loss: float) -> None:
        self.losses.append(loss)
        if (i + 1) % self.every == 0 or i + 1 == self.steps:
            mean = sum(self.losses) / len(self.losses)
            self.say(f"  {self.name} step {i + 1}/{self.steps}  loss {mean:.4f}  "
                     f"({time.perf_counter() - self.t0:.0f} s)")
            self.losses = []


def cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate from its peak down to zero along a half cosine: a short run ends settled, not mid-jump."""
    import math

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))


def train_vae(vae, pixels: torch.Tensor, settings: PretrainSettings, say: Callable[[str], None]) -> None:
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    schedule = cosine(optimizer, settings.vae_steps)
    progress = Progress("vae", settings.vae_steps, say)
    for i in range(settings.vae_steps):
        batch = pixels[torch.randint(len(pixels), (settings.batch_size,))]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - batch).pow(2).mean() + settings.kl_weight * posterior.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step(i, loss.item())
    vae.eval()


@torch.no_grad()
def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Latents of all pictures (posterior means), scaled to unit spread; the scale is written into the VAE's config
    so that the pipeline (and lorakit's trainer) scale the same way."""
    latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)])
    scale = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scale)
    return latents * scale


def train_denoiser(pipe, latents: torch.Tensor, captions: list[str], settings: PretrainSettings,
                   say: Callable[[str], None]) -> None:
    unet, text_encoder, scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
    rng = random.Random(settings.seed)
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    empty = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                           return_tensors="pt").input_ids[0]
    unet.train()
    text_encoder.train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.unet_lr, weight_decay=0.0)
    schedule = cosine(optimizer, settings.unet_steps)
    progress = Progress("unet", settings.unet_steps, say)
    steps = scheduler.config.num_train_timesteps
    for i in range(settings.unet_steps):
        rows = torch.randint(len(latents), (settings.batch_size,))
        batch_ids = ids[rows].clone()
        for j in range(len(rows)):
            if rng.random() < settings.caption_dropout:
                batch_ids[j] = empty
        x0 = latents[rows]
        noise = torch.randn_like(x0)
        t = torch.randint(0, steps, (len(rows),))
        noisy = scheduler.add_noise(x0, noise, t)
        prediction = unet(noisy, t, text_encoder(batch_ids)[0]).sample
        loss = (prediction - scheduler.get_velocity(x0, noise, t)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step(i, loss.item())
    unet.eval()
    text_encoder.eval()
