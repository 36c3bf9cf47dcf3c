"""The denoising loss against the formulas written out here: x_t, the epsilon / v targets, min-SNR weights."""

from __future__ import annotations

import pytest
import torch

from lorakit.train.diffusion.loss import draw_noise, draw_timesteps, min_snr_weights, per_example_loss, snr, target_for

pytest.importorskip("diffusers")


def scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type)


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """abar_t of the scaled-linear schedule, computed here from its betas (float64)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)[t]


def draws(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 4, 8, 8, generator=generator)
    return x0, draw_noise(x0, generator), torch.tensor([0, 500, 999])


def test_noisy_latents_follow_the_forward_process():
    x0, eps, t = draws()
    ab = alpha_bar(t).float().view(-1, 1, 1, 1)
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    torch.testing.assert_close(scheduler().add_noise(x0, eps, t), expected)


def test_epsilon_target_is_the_noise():
    x0, eps, t = draws()
    assert torch.equal(target_for(scheduler(), x0, eps, t, "epsilon"), eps)


def test_v_target_is_sqrt_abar_eps_minus_sqrt_one_minus_abar_x0():
    x0, eps, t = draws()
    ab = alpha_bar(t).float().view(-1, 1, 1, 1)
    expected = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(target_for(scheduler("v_prediction"), x0, eps, t, "v_prediction"), expected)


def paper_min_snr(t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Hang et al. 2023: the x0-loss weight is min(SNR, gamma); an eps-loss is SNR times an x0-loss, a v-loss is
    SNR + 1 times one, so their weights divide by those factors."""
    ab = alpha_bar(t)
    ratio = ab / (1 - ab)
    factor = ratio if prediction_type == "epsilon" else ratio + 1
    return (torch.minimum(ratio, torch.full_like(ratio, gamma)) / factor).float()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_the_paper(prediction_type):
    t = torch.tensor([0, 10, 100, 300, 600, 999])
    weights = min_snr_weights(scheduler().alphas_cumprod, t, 5.0, prediction_type)
    torch.testing.assert_close(weights, paper_min_snr(t, 5.0, prediction_type))
    # the cut does something: low-noise steps (SNR > 5) are down-weighted, high-noise ones keep their loss
    assert weights[0] < 0.01 and snr(scheduler().alphas_cumprod, t)[-1] < 5


def test_v_prediction_weights_are_not_the_epsilon_ones():
    t = torch.tensor([999])  # high noise: SNR << gamma, eps weight 1, v weight SNR / (SNR + 1) < 1
    alphas = scheduler().alphas_cumprod
    assert min_snr_weights(alphas, t, 5.0, "epsilon").item() == pytest.approx(1.0)
    assert min_snr_weights(alphas, t, 5.0, "v_prediction").item() < 0.01


def test_per_example_loss_is_the_weighted_mean_squared_error():
    prediction, target = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    weights = torch.tensor([0.5, 2.0])
    expected = torch.stack([((prediction[i] - target[i]) ** 2).mean() * weights[i] for i in range(2)])
    torch.testing.assert_close(per_example_loss(prediction, target, weights), expected)


def test_draws_are_a_function_of_the_generator_and_offset_noise_shifts_each_channel():
    x0 = torch.zeros(2, 4, 8, 8)
    first = draw_noise(x0, torch.Generator().manual_seed(3), offset=0.5)
    again = draw_noise(x0, torch.Generator().manual_seed(3), offset=0.5)
    plain = draw_noise(x0, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    shift = first - plain  # the offset part is constant over each (example, channel) plane
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift)) and shift.abs().max() > 0
    steps = draw_timesteps(1000, 1000, torch.Generator().manual_seed(0))
    assert steps.min() >= 0 and steps.max() <= 999 and steps.unique().numel() > 500
