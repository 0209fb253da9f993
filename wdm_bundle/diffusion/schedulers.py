"""MONAI schedulers configured for wavelet diffusion: x0-predicting DDPM/DDIM, or rectified flow."""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler, Scheduler
from monai.utils import StrEnum

__all__ = ["Sampler", "Diffusion", "make_scheduler", "diffusion_of", "check_sampler", "velocity_from_x0",
           "RFLOW_X0_MIN_T"]


class Sampler(StrEnum):
    """Sampling algorithms.

    ``ddpm`` = ancestral over all T steps (the paper), ``ddim`` = deterministic, any steps (both
    for models trained with ``diffusion="ddpm"``); ``rflow`` = Euler steps of a rectified flow
    (models trained with ``diffusion="rflow"`` or ``"rflow_x0"``).
    """

    DDPM = "ddpm"
    DDIM = "ddim"
    RFLOW = "rflow"


class Diffusion(StrEnum):
    """Training objectives.

    ``ddpm``: the paper's DDPM forward process (linear betas), the network predicts the clean
    coefficients x0; sampled with ``ddpm`` or ``ddim``. ``rflow``: rectified flow (MONAI
    `RFlowScheduler`, as in MAISI): x_t = (1 - t/T) x0 + (t/T) noise, the network predicts the
    velocity x0 - noise; sampled with ``rflow`` in a few tens of steps. ``rflow_x0``: the same
    flow and the same velocity loss, but the network predicts x0 (as the paper's network does) and
    the velocity is computed from it, ``(x0 - x_t) / max(t/T, RFLOW_X0_MIN_T)`` ("x-prediction",
    Li & He 2025); at this bundle's small training budgets its samples are clean where a
    velocity-predicting network leaves noise (docs/performance.md).
    """

    DDPM = "ddpm"
    RFLOW = "rflow"
    RFLOW_X0 = "rflow_x0"


#: Smallest t/T by which `velocity_from_x0` divides: the velocity loss of an x0-predicting network
#: weighs x0 errors by (T/t)^2, unbounded near t = 0 without a floor (0.05 as Li & He 2025).
RFLOW_X0_MIN_T = 0.05


def velocity_from_x0(x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, num_train_timesteps: int,
                     min_t: float = RFLOW_X0_MIN_T) -> torch.Tensor:
    """Rectified-flow velocity ``(x0 - x_t) / max(t/T, min_t)`` of an x0 (B, C, ...) at ``x_t``, ``timesteps`` (B,).

    Equals x0 - noise where t/T >= ``min_t`` (x_t = (1 - t/T) x0 + (t/T) noise); used alike for
    the network's prediction and for the training target, so their difference is the x0 error
    divided by max(t/T, min_t).
    """
    frac = (timesteps.to(torch.float32) / num_train_timesteps).clamp_min(min_t)
    return (x0 - x_t) / frac.reshape(-1, *(1,) * (x0.ndim - 1)).to(x0.dtype)


#: Default number of sampling steps per sampler (None = all T steps).
DEFAULT_STEPS = {Sampler.DDPM: None, Sampler.DDIM: 50, Sampler.RFLOW: 30}


def make_scheduler(
    sampler: str = Sampler.DDPM,
    num_inference_steps: int | None = None,
    num_train_timesteps: int = 1000,
    schedule: str = "linear_beta",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    variance_type: str = "fixed_small",
    timestep_sampling: str = "uniform",
    timestep_loc: float = 0.0,
    timestep_scale: float = 1.0,
) -> Scheduler:
    """Build a MONAI scheduler for wavelet diffusion, timesteps already set.

    ``ddpm``/``ddim`` predict x0 (``prediction_type="sample"``) with MONAI's own clipping off
    (``clip_sample=False``): the sampler clamps x0 in image space, which MONAI cannot do because
    the scheduler never sees the wavelet transform. ``rflow`` is MONAI's `RFlowScheduler`
    (velocity prediction, discrete timesteps drawn uniformly for training, evenly spaced from T
    down for sampling, no resolution-dependent timestep shift).

    Args:
        sampler: ``"ddpm"``, ``"ddim"`` or ``"rflow"``; for training, the objective (`Diffusion`):
            ``"ddpm"``, or ``"rflow"``/``"rflow_x0"`` (both an `RFlowScheduler`).
        num_inference_steps: denoising steps; default T for DDPM, 50 for DDIM, 30 for RFlow.
            DDPM with fewer than T steps uses MONAI's strided DDPM.
        num_train_timesteps: T (paper: 1000).
        schedule, beta_start, beta_end: DDPM/DDIM noise schedule (paper: linear 1e-4 -> 0.02).
        variance_type: DDPM posterior variance (``fixed_small`` or ``fixed_large``).
        timestep_sampling, timestep_loc, timestep_scale: RFlow only: how training draws t
            (MONAI's ``sample_method``, ``"uniform"`` or ``"logit-normal"``: t/T =
            sigmoid(N(loc, scale)); loc > 0 trains more on noisy inputs). DDPM training draws t
            uniformly, as the paper.
    """
    sampler = Sampler(Sampler.RFLOW if sampler == Diffusion.RFLOW_X0 else sampler)  # training: the objective's scheduler
    default = DEFAULT_STEPS[sampler]
    steps = (num_train_timesteps if default is None else default) if num_inference_steps is None else int(num_inference_steps)
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {steps}.")
    if sampler == Sampler.RFLOW:
        scheduler: Scheduler = RFlowScheduler(num_train_timesteps=num_train_timesteps, use_discrete_timesteps=True,
                                              sample_method=timestep_sampling, loc=float(timestep_loc),
                                              scale=float(timestep_scale))
    else:
        common = dict(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type="sample",
            clip_sample=False,
        )
        if sampler == Sampler.DDPM:
            scheduler = DDPMScheduler(variance_type=variance_type, **common)
        else:
            scheduler = DDIMScheduler(**common)
    scheduler.set_timesteps(steps)
    return scheduler


def diffusion_of(scheduler_or_sampler: Scheduler | str) -> str:
    """The family of training objectives a scheduler or sampler name samples: ``"rflow"`` (also for
    ``"rflow_x0"`` models) or ``"ddpm"``."""
    if isinstance(scheduler_or_sampler, str):
        return Diffusion.RFLOW.value if Sampler(scheduler_or_sampler) == Sampler.RFLOW else Diffusion.DDPM.value
    return Diffusion.RFLOW.value if isinstance(scheduler_or_sampler, RFlowScheduler) else Diffusion.DDPM.value


def check_sampler(trained: str, sampler: Scheduler | str, source: str = "the checkpoint") -> None:
    """Raise a ValueError if a model trained with objective ``trained`` cannot be sampled with ``sampler``."""
    trained = Diffusion(trained).value
    wanted = diffusion_of(sampler)
    family = Diffusion.DDPM.value if trained == Diffusion.DDPM else Diffusion.RFLOW.value
    if family == wanted:
        return
    name = sampler if isinstance(sampler, str) else type(sampler).__name__
    fits = "'rflow'" if family == Diffusion.RFLOW else "'ddpm' or 'ddim'"
    kind = {"ddpm": "x0", "rflow": "velocity", "rflow_x0": "rectified-flow x0"}[trained]
    raise ValueError(
        f"{source} was trained with diffusion='{trained}' ({kind} prediction) "
        f"but is to be sampled with {name} (for diffusion='{wanted}'); use --sampler {fits}."
    )
