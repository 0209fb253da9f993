"""MONAI schedulers configured for x0-predicting wavelet diffusion."""

from __future__ import annotations

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from monai.utils import StrEnum

__all__ = ["Sampler", "make_scheduler"]


class Sampler(StrEnum):
    """Sampling algorithms: ``ddpm`` = ancestral over all T steps (the paper), ``ddim`` = deterministic, any steps."""

    DDPM = "ddpm"
    DDIM = "ddim"


def make_scheduler(
    sampler: str = Sampler.DDPM,
    num_inference_steps: int | None = None,
    num_train_timesteps: int = 1000,
    schedule: str = "linear_beta",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    variance_type: str = "fixed_small",
) -> Scheduler:
    """Build a MONAI scheduler predicting x0 (``prediction_type="sample"``), timesteps already set.

    MONAI's own clipping is off (``clip_sample=False``): the sampler clamps x0 in image space,
    which MONAI cannot do because the scheduler never sees the wavelet transform.

    Args:
        sampler: ``"ddpm"`` or ``"ddim"``.
        num_inference_steps: denoising steps; default T for DDPM, 50 for DDIM. DDPM with fewer
            than T steps uses MONAI's strided DDPM.
        num_train_timesteps: T (paper: 1000).
        schedule, beta_start, beta_end: noise schedule (paper: linear 1e-4 -> 0.02).
        variance_type: DDPM posterior variance (``fixed_small`` or ``fixed_large``).
    """
    sampler = Sampler(sampler)
    common = dict(
        num_train_timesteps=num_train_timesteps,
        schedule=schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type="sample",
        clip_sample=False,
    )
    if sampler == Sampler.DDPM:
        scheduler: Scheduler = DDPMScheduler(variance_type=variance_type, **common)
        steps = num_train_timesteps if num_inference_steps is None else num_inference_steps
    else:
        scheduler = DDIMScheduler(**common)
        steps = 50 if num_inference_steps is None else num_inference_steps
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {steps}.")
    scheduler.set_timesteps(steps)
    return scheduler
