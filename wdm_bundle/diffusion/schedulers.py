"""MONAI schedulers configured for wavelet diffusion: x0-predicting DDPM/DDIM, or rectified flow."""

from __future__ import annotations

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler, Scheduler
from monai.utils import StrEnum

__all__ = ["Sampler", "Diffusion", "make_scheduler", "diffusion_of", "check_sampler"]


class Sampler(StrEnum):
    """Sampling algorithms.

    ``ddpm`` = ancestral over all T steps (the paper), ``ddim`` = deterministic, any steps (both
    for models trained with ``diffusion="ddpm"``); ``rflow`` = Euler steps of a rectified flow
    (models trained with ``diffusion="rflow"``).
    """

    DDPM = "ddpm"
    DDIM = "ddim"
    RFLOW = "rflow"


class Diffusion(StrEnum):
    """Training objectives.

    ``ddpm``: the paper's DDPM forward process (linear betas), the network predicts the clean
    coefficients x0; sampled with ``ddpm`` or ``ddim``. ``rflow``: rectified flow (MONAI
    `RFlowScheduler`, as in MAISI): x_t = (1 - t/T) x0 + (t/T) noise, the network predicts the
    velocity x0 - noise; sampled with ``rflow`` in a few tens of steps.
    """

    DDPM = "ddpm"
    RFLOW = "rflow"


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
) -> Scheduler:
    """Build a MONAI scheduler for wavelet diffusion, timesteps already set.

    ``ddpm``/``ddim`` predict x0 (``prediction_type="sample"``) with MONAI's own clipping off
    (``clip_sample=False``): the sampler clamps x0 in image space, which MONAI cannot do because
    the scheduler never sees the wavelet transform. ``rflow`` is MONAI's `RFlowScheduler`
    (velocity prediction, discrete timesteps drawn uniformly for training, evenly spaced from T
    down for sampling, no resolution-dependent timestep shift).

    Args:
        sampler: ``"ddpm"``, ``"ddim"`` or ``"rflow"``; for training, ``"ddpm"`` or ``"rflow"``
            selects the objective (see `Diffusion`).
        num_inference_steps: denoising steps; default T for DDPM, 50 for DDIM, 30 for RFlow.
            DDPM with fewer than T steps uses MONAI's strided DDPM.
        num_train_timesteps: T (paper: 1000).
        schedule, beta_start, beta_end: DDPM/DDIM noise schedule (paper: linear 1e-4 -> 0.02).
        variance_type: DDPM posterior variance (``fixed_small`` or ``fixed_large``).
    """
    sampler = Sampler(sampler)
    default = DEFAULT_STEPS[sampler]
    steps = (num_train_timesteps if default is None else default) if num_inference_steps is None else int(num_inference_steps)
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {steps}.")
    if sampler == Sampler.RFLOW:
        scheduler: Scheduler = RFlowScheduler(num_train_timesteps=num_train_timesteps, use_discrete_timesteps=True)
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
    """The training objective (`Diffusion`) a scheduler or sampler name belongs to: ``"rflow"`` or ``"ddpm"``."""
    if isinstance(scheduler_or_sampler, str):
        return Diffusion.RFLOW.value if Sampler(scheduler_or_sampler) == Sampler.RFLOW else Diffusion.DDPM.value
    return Diffusion.RFLOW.value if isinstance(scheduler_or_sampler, RFlowScheduler) else Diffusion.DDPM.value


def check_sampler(trained: str, sampler: Scheduler | str, source: str = "the checkpoint") -> None:
    """Raise a ValueError if a model trained with objective ``trained`` cannot be sampled with ``sampler``."""
    trained = Diffusion(trained).value
    wanted = diffusion_of(sampler)
    if trained == wanted:
        return
    name = sampler if isinstance(sampler, str) else type(sampler).__name__
    fits = "'rflow'" if trained == Diffusion.RFLOW else "'ddpm' or 'ddim'"
    raise ValueError(
        f"{source} was trained with diffusion='{trained}' ({'velocity' if trained == 'rflow' else 'x0'} prediction) "
        f"but is to be sampled with {name} (for diffusion='{wanted}'); use --sampler {fits}."
    )
