"""Training-objective options of DDPM models: the per-timestep weight of the x0 loss, and how t is drawn.

The network predicts x0 under every option (every sampler and the image-space x0 clamp work unchanged); the
objective options are per-timestep weights w_t on the x0 MSE. With x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
(a_t = alpha_bar_t) and SNR_t = a_t / (1 - a_t), an x0 error e gives an eps error sqrt(SNR_t) e and a v error
e / sqrt(1 - a_t), so weighting the x0 MSE by SNR_t (``eps``) or SNR_t + 1 (``v``) has the gradients of the eps or
v objectives of an x0-parameterised network (up to the normalisation and the cap below).

The weights are normalised so that their mean over t uniform in [0, T) is 1: the loss keeps the scale of the plain
MSE at equal per-timestep errors (with another timestep draw their mean under that draw is not 1).
"""

from __future__ import annotations

import torch

from wdm_bundle.diffusion.schedulers import ClosedSet

__all__ = [
    "LossWeighting",
    "TimestepDraw",
    "MAX_SNR_WEIGHT",
    "DEFAULT_LOSS_GAMMA",
    "snr",
    "loss_weights",
    "draw_timesteps",
]

#: Cap of the ``eps`` and ``v`` weights before normalisation. SNR_t of the paper's linear betas (T = 1000) falls
#: from 9999 at t = 0 to 1112 at t = 5, so only t < 6 are capped; the first 10 of 1000 steps still carry 57% of
#: the total weight (without the cap: 79%, t = 0 alone 32%).
MAX_SNR_WEIGHT = 1e3

#: Min-SNR's gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy").
DEFAULT_LOSS_GAMMA = 5.0


class LossWeighting(ClosedSet):
    """Per-timestep weight of the x0 MSE, normalised to mean 1 over t uniform in [0, T).

    ``uniform``: 1, the paper's plain MSE. ``eps``: SNR_t = alpha_bar_t / (1 - alpha_bar_t), capped at
    `MAX_SNR_WEIGHT` (the epsilon objective). ``v``: SNR_t + 1, same cap (the v objective). ``min_snr``:
    min(SNR_t, gamma) (Min-SNR-gamma of an x0-predicting network, Hang et al. 2023; gamma: ``loss_gamma``).
    """

    UNIFORM = "uniform"
    EPS = "eps"
    V = "v"
    MIN_SNR = "min_snr"


class TimestepDraw(ClosedSet):
    """How DDPM training draws t in [0, T): ``uniform`` (the paper), or ``logit-normal``: t = floor(T u) with
    u = sigmoid(N(loc, scale)) (loc > 0 trains more on noisy inputs, loc < 0 on clean ones). Rectified flow has its
    own draw (`TimestepSampling`)."""

    UNIFORM = "uniform"
    LOGIT_NORMAL = "logit-normal"


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR_t = alpha_bar_t / (1 - alpha_bar_t) of a cumulative-alpha table (T,), in float64."""
    a = torch.as_tensor(alphas_cumprod).to(torch.float64)
    return a / (1.0 - a)


def loss_weights(
    alphas_cumprod: torch.Tensor,
    loss_weighting: str = LossWeighting.UNIFORM,
    loss_gamma: float = DEFAULT_LOSS_GAMMA,
    max_weight: float = MAX_SNR_WEIGHT,
) -> torch.Tensor:
    """Weights (T,) float64 of ``loss_weighting`` (`LossWeighting`), mean 1 over the T timesteps.

    Args:
        alphas_cumprod: the schedule's alpha_bar_t (T,), e.g. `DDPMScheduler64.alphas_cumprod` (float64).
        loss_weighting: ``uniform``, ``eps``, ``v`` or ``min_snr``.
        loss_gamma: gamma > 0 of ``min_snr``.
        max_weight: cap > 0 of ``eps`` and ``v``, before normalisation.
    """
    weighting = LossWeighting.named(loss_weighting, "loss_weighting")
    loss_gamma, max_weight = float(loss_gamma), float(max_weight)
    if not loss_gamma > 0 or not max_weight > 0:
        raise ValueError(f"loss_gamma and max_weight must be > 0, got {loss_gamma} and {max_weight}.")
    ratio = snr(alphas_cumprod)
    if weighting == LossWeighting.UNIFORM:
        weights = torch.ones_like(ratio)
    elif weighting == LossWeighting.EPS:
        weights = ratio.clamp(max=max_weight)
    elif weighting == LossWeighting.V:
        weights = (ratio + 1.0).clamp(max=max_weight)
    else:
        weights = ratio.clamp(max=loss_gamma)
    return weights / weights.mean()


def draw_timesteps(
    batch_size: int,
    num_train_timesteps: int,
    draw: str = TimestepDraw.UNIFORM,
    loc: float = 0.0,
    scale: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``batch_size`` training timesteps (B,) long in [0, T) drawn by ``draw`` (`TimestepDraw`), from the global RNG.

    ``uniform`` is MONAI's draw (``torch.randint``), the same numbers as `DiffusionPrepareBatch.get_timesteps`.
    """
    draw = TimestepDraw.named(draw, "ddpm_timestep_draw")
    if draw == TimestepDraw.UNIFORM:
        return torch.randint(0, num_train_timesteps, (batch_size,), device=device).long()
    u = torch.sigmoid(torch.randn(batch_size, device=device) * float(scale) + float(loc))
    return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)
