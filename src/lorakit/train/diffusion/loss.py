"""The denoising loss of a diffusion model, per example.

With x0 the clean latents, eps ~ N(0, I) and abar_t the scheduler's cumulative alpha product at timestep t:
    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps                 (scheduler.add_noise)
The network sees x_t and predicts, depending on the scheduler's prediction_type,
    epsilon:       eps
    v_prediction:  v = sqrt(abar_t) * eps - sqrt(1 - abar_t) * x0   (scheduler.get_velocity)
and the loss is the mean squared error over each example's latent, times an optional weight per example.

Min-SNR weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"): with
SNR(t) = abar_t / (1 - abar_t), the loss of an x0-prediction is weighted by min(SNR, gamma). An eps-prediction's
error is SNR times an x0 error, so its weight is min(SNR, gamma) / SNR; a v-prediction's error is (SNR + 1) times
an x0 error, so its weight is min(SNR, gamma) / (SNR + 1).
"""

from __future__ import annotations

import torch


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = abar_t / (1 - abar_t), one per timestep."""
    abar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return abar / (1.0 - abar)


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """The per-example loss weights of min-SNR-gamma for this prediction type (see the module docstring)."""
    ratio = snr(alphas_cumprod, timesteps)
    clipped = torch.clamp(ratio, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (ratio + 1.0)
    return clipped / ratio


def draw_noise(latents: torch.Tensor, generator: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """eps ~ N(0, I) shaped as the latents (drawn on the CPU, so a seed means the same noise on any device); with
    `offset`, plus offset * N(0, 1) per example and channel (noise offset: lets the model shift mean brightness)."""
    noise = torch.randn(latents.shape, generator=generator)
    if offset:
        noise = noise + offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    return noise.to(device=latents.device, dtype=latents.dtype)


def draw_timesteps(count: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """Timesteps uniform over the scheduler's training range [0, num_train_timesteps)."""
    return torch.randint(0, num_train_timesteps, (count,), generator=generator)


def target_for(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
               prediction_type: str) -> torch.Tensor:
    """What the network should predict: the noise, or the velocity."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction type {prediction_type!r}")  # validated in the config; an internal error here


def per_example_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Mean squared error over each example's latent (in float32), times its weight: shape (batch,)."""
    error = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
    return error if weights is None else error * weights.to(error.device)
