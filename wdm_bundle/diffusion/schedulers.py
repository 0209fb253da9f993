"""MONAI schedulers configured for wavelet diffusion: x0-predicting DDPM/DDIM, or rectified flow.

Vocabulary: the *diffusion* (`Diffusion`) is the training objective, fixed when a model is trained
(`training_scheduler`); the *sampler* (`Sampler`) is the sampling algorithm, chosen at inference
(`make_scheduler`) among those that suit the objective (`check_sampler`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedules, RFlowScheduler, Scheduler
from monai.networks.schedulers.ddpm import DDPMVarianceType
from monai.utils import StrEnum, unsqueeze_right

from wdm_bundle.diffusion import ddim

__all__ = [
    "Sampler",
    "Diffusion",
    "TimestepSampling",
    "TimestepSpacing",
    "VarianceType",
    "make_scheduler",
    "training_scheduler",
    "diffusion_of",
    "check_sampler",
    "velocity_from_x0",
    "RFLOW_X0_MIN_T",
    "Float64Schedule",
    "DDPMScheduler64",
    "DDIMScheduler64",
    "VARIANCE_TYPES",
]


class ClosedSet(StrEnum):
    """A `StrEnum` whose error for an unknown value lists the allowed ones."""

    @classmethod
    def named(cls, value: object, name: str) -> ClosedSet:
        """``cls(value)``; its error (which lists the allowed values) names the setting ``name``."""
        try:
            return cls(value)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None

    @classmethod
    def _missing_(cls, value: object) -> Any:
        allowed = ", ".join(m.value for m in cls)
        raise ValueError(f"{value!r} is not a valid {cls.__name__}; use one of {allowed}.")


class Sampler(ClosedSet):
    """Sampling algorithms.

    ``ddpm`` = ancestral over all T steps (the paper), ``ddim`` = deterministic, any steps (both
    for models trained with ``diffusion="ddpm"``); ``rflow`` = Euler steps of a rectified flow
    (models trained with ``diffusion="rflow"`` or ``"rflow_x0"``).
    """

    DDPM = "ddpm"
    DDIM = "ddim"
    RFLOW = "rflow"


class Diffusion(ClosedSet):
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


class TimestepSampling(ClosedSet):
    """How rectified-flow training draws t (MONAI's ``sample_method``): ``uniform``, or ``logit-normal``
    (t/T = sigmoid(N(loc, scale)))."""

    UNIFORM = "uniform"
    LOGIT_NORMAL = "logit-normal"


class TimestepSpacing(ClosedSet):
    """Which DDIM timesteps a chain of N steps visits (`wdm_bundle.diffusion.ddim`), a sampling choice.

    ``linspace``: MONAI's ``linspace(T - 1, 0, N)``, stepping from t to t - T // N (for few steps not the listed
    next timestep: N = 2 calls the model at t = 999, then at t = 0 on a sample at level 499); ``leading``:
    (N - 1) s, ..., s, 0 with s = T // N; ``trailing``: round(T - i T / N) - 1, i = 0 .. N - 1, from the
    pure-noise level T - 1. ``leading`` and ``trailing`` step to the next listed timestep, the last to x0.
    """

    LINSPACE = ddim.LINSPACE
    LEADING = ddim.LEADING
    TRAILING = ddim.TRAILING


class VarianceType(ClosedSet):
    """DDPM posterior variances: ``fixed_large`` (sigma_t^2 = beta_t, the reference's) or ``fixed_small``
    (the posterior's beta~_t). MONAI's ``learned*`` types need a variance output, which the wavelet
    networks do not have."""

    FIXED_SMALL = DDPMVarianceType.FIXED_SMALL.value
    FIXED_LARGE = DDPMVarianceType.FIXED_LARGE.value


#: Smallest t/T by which `velocity_from_x0` divides: the velocity loss of an x0-predicting network
#: weighs x0 errors by (T/t)^2, unbounded near t = 0 without a floor (0.05 as Li & He 2025).
RFLOW_X0_MIN_T = 0.05


def velocity_from_x0(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    num_train_timesteps: int,
    min_t: float = RFLOW_X0_MIN_T,
) -> torch.Tensor:
    """Rectified-flow velocity ``(x0 - x_t) / max(t/T, min_t)`` of an x0 (B, C, ...) at ``x_t``, ``timesteps`` (B,).

    Equals x0 - noise where t/T >= ``min_t`` (x_t = (1 - t/T) x0 + (t/T) noise); used alike for
    the network's prediction and for the training target, so their difference is the x0 error
    divided by max(t/T, min_t).
    """
    frac = (timesteps.to(torch.float32) / num_train_timesteps).clamp_min(min_t)
    return (x0 - x_t) / frac.reshape(-1, *(1,) * (x0.ndim - 1)).to(x0.dtype)


def _linear_beta64(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def _scaled_linear_beta64(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2


def _sigmoid_beta64(
    num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2, sig_range: float = 6
) -> torch.Tensor:
    x = torch.linspace(-sig_range, sig_range, num_train_timesteps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def _cosine64(num_train_timesteps: int, s: float = 8e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.linspace(0, num_train_timesteps, num_train_timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / num_train_timesteps) + s) / (1 + s) * torch.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = torch.clip(1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0.0, 0.999)
    alphas = 1.0 - betas
    return betas, alphas, torch.cumprod(alphas, dim=0)


#: float64 twins of MONAI's built-in `NoiseSchedules` (same names, arguments and formulas). A schedule
#: registered elsewhere is computed by MONAI's function (usually float32) and only then widened.
FLOAT64_SCHEDULES = {
    "linear_beta": _linear_beta64,
    "scaled_linear_beta": _scaled_linear_beta64,
    "sigmoid_beta": _sigmoid_beta64,
    "cosine": _cosine64,
}


class Float64Schedule:
    """Mixin for MONAI's `Scheduler`: beta, alpha and cumulative-alpha tables built and kept in float64.

    Why: the reference builds its schedule in float64 and casts only looked-up coefficients; MONAI's
    float32 tables make DDPM's x0 weight at t = 0 0.99983 instead of 1, scaling every sample by 1.7e-4.
    `add_noise`/`get_velocity` look up in float64 and cast the per-sample coefficients to the
    samples' dtype (MONAI's versions overwrite the tables with the samples' dtype). `step` keeps
    MONAI's code: a 0-d float64 coefficient times a float32 tensor is float32.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The arguments of the MONAI scheduler this mixin precedes (next in the MRO)."""
        super().__init__(*args, **kwargs)
        arguments = inspect.signature(super().__init__).bind(*args, **kwargs)
        arguments.apply_defaults()
        self._set_float64_tables(arguments.arguments)

    def _set_float64_tables(self, arguments: dict[str, Any]) -> None:
        """Rebuild the tables from the MONAI constructor's ``arguments`` (``schedule``, ``schedule_args``)."""
        schedule = arguments["schedule"]
        args = dict(arguments["schedule_args"], num_train_timesteps=self.num_train_timesteps)
        tables = FLOAT64_SCHEDULES.get(schedule, NoiseSchedules[schedule])(**args)
        if isinstance(tables, tuple):
            betas, alphas, alphas_cumprod = (torch.as_tensor(v).to(torch.float64) for v in tables)
        else:
            betas = torch.as_tensor(tables).to(torch.float64)
            alphas = 1.0 - betas
            alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.betas, self.alphas, self.alphas_cumprod = betas, alphas, alphas_cumprod
        self.one = torch.tensor(1.0, dtype=torch.float64)  # DDPM's alpha_bar_{-1}

    def _sqrt_alphas(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) of ``timesteps`` (B,), computed in float64, returned
        in ``like``'s dtype and device as (B, 1, ...) to broadcast over ``like`` (B, ...)."""
        device = torch.device("cpu") if like.device.type == "mps" else like.device  # MPS has no float64
        alpha_bar = self.alphas_cumprod.to(device)[timesteps.to(device)]
        sqrt_alpha, sqrt_one_minus = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()  # cast only after the lookup
        return (
            unsqueeze_right(sqrt_alpha.to(like.device, like.dtype), like.ndim),
            unsqueeze_right(sqrt_one_minus.to(like.device, like.dtype), like.ndim),
        )

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise for x0, noise (B, ...) and ``timesteps`` (B,)."""
        sqrt_alpha, sqrt_one_minus = self._sqrt_alphas(timesteps, original_samples)
        return sqrt_alpha * original_samples + sqrt_one_minus * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0 for x0 ``sample``, noise (B, ...), t (B,)."""
        sqrt_alpha, sqrt_one_minus = self._sqrt_alphas(timesteps, sample)
        return sqrt_alpha * noise - sqrt_one_minus * sample


class DDPMScheduler64(Float64Schedule, DDPMScheduler):
    """MONAI's `DDPMScheduler` with float64 tables (`Float64Schedule`); same arguments."""


class DDIMScheduler64(Float64Schedule, ddim.SpacedDDIM, DDIMScheduler):
    """MONAI's `DDIMScheduler` with float64 tables (`Float64Schedule`) and ``timestep_spacing``
    (`TimestepSpacing`, `ddim.SpacedDDIM`; ``"linspace"`` = MONAI's timesteps and steps) and ``eta`` in [0, 1], the
    default of `step`'s eta (0: deterministic DDIM; 1: ancestral steps); otherwise its arguments."""

    def __init__(
        self, *args: Any, timestep_spacing: str = TimestepSpacing.LINSPACE, eta: float = 0.0, **kwargs: Any
    ) -> None:
        self.timestep_spacing = _member(TimestepSpacing, timestep_spacing, "timestep_spacing").value
        self.eta = ddim.check_eta(eta)
        super().__init__(*args, **kwargs)

    def _set_float64_tables(self, arguments: dict[str, Any]) -> None:
        super()._set_float64_tables(arguments)
        self.final_alpha_cumprod = self.one.clone() if arguments["set_alpha_to_one"] else self.alphas_cumprod[0]


#: DDPM posterior variances `make_scheduler` accepts (`VarianceType`).
VARIANCE_TYPES = tuple(v.value for v in VarianceType)

#: Default number of sampling steps per sampler (None = all T steps).
DEFAULT_STEPS = {Sampler.DDPM: None, Sampler.DDIM: 50, Sampler.RFLOW: 30}


def _member(kind: type[ClosedSet], value: Any, name: str) -> ClosedSet:
    """``kind(value)``; its error (which lists the allowed values) names the argument."""
    return kind.named(value, name)


def make_scheduler(
    sampler: str = Sampler.DDPM,
    num_inference_steps: int | None = None,
    num_train_timesteps: int = 1000,
    schedule: str = "linear_beta",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    variance_type: str = VarianceType.FIXED_LARGE,
    timestep_sampling: str = TimestepSampling.UNIFORM,
    timestep_loc: float = 0.0,
    timestep_scale: float = 1.0,
    timestep_spacing: str = TimestepSpacing.LINSPACE,
    ddim_eta: float = 0.0,
) -> Scheduler:
    """The MONAI scheduler of sampling algorithm ``sampler`` (`Sampler`) for wavelet diffusion, timesteps set.

    ``ddpm``/``ddim`` are `DDPMScheduler64`/`DDIMScheduler64` (float64 tables, as the reference)
    predicting x0 (``prediction_type="sample"``) with MONAI's own clipping off
    (``clip_sample=False``): the sampler clamps x0 in image space, which MONAI cannot do because
    the scheduler never sees the wavelet transform. ``rflow`` is MONAI's `RFlowScheduler`
    (velocity prediction, discrete timesteps drawn uniformly for training, evenly spaced from T
    down for sampling, no resolution-dependent timestep shift). A model's training scheduler is
    `training_scheduler`.

    The returned scheduler has ``schedule_config``: the keyword arguments of this function that
    rebuild its training schedule, so ``make_scheduler(sampler, steps, **s.schedule_config)`` gives
    another sampler of the same model. DDPM/DDIM: ``num_train_timesteps``, ``schedule``,
    ``beta_start``, ``beta_end``, ``variance_type``; RFlow: ``num_train_timesteps``,
    ``timestep_sampling``, ``timestep_loc``, ``timestep_scale``.

    Args:
        sampler: ``"ddpm"``, ``"ddim"`` (models trained with diffusion ``"ddpm"``) or ``"rflow"``
            (``"rflow"``/``"rflow_x0"`` models).
        num_inference_steps: denoising steps; default T for DDPM, 50 for DDIM, 30 for RFlow.
            DDPM with fewer than T steps uses MONAI's strided DDPM.
        num_train_timesteps: T (paper: 1000).
        schedule, beta_start, beta_end: DDPM/DDIM noise schedule (paper: linear 1e-4 -> 0.02).
        variance_type: DDPM posterior variance (`VarianceType`); DDIM ignores it.
        timestep_sampling, timestep_loc, timestep_scale: RFlow only: how training draws t
            (`TimestepSampling`; loc > 0 trains more on noisy inputs). DDPM training draws t
            uniformly, as the paper.
        timestep_spacing: DDIM only (`TimestepSpacing`): which timesteps N steps visit, a sampling choice (not
            in ``schedule_config``); ``"trailing"`` or ``"leading"`` for few (2-10) steps, ``"linspace"``
            (MONAI's, the default) keeps earlier outputs. DDPM and RFlow ignore it.
        ddim_eta: DDIM only: eta in [0, 1] of every step, a sampling choice (not in ``schedule_config``): 0 (the
            default) deterministic DDIM; 1 ancestral sampling with the DDPM posterior of the spaced chain
            (docs/acceleration.md, "Four network calls"). DDPM and RFlow ignore it.
    """
    if isinstance(sampler, str) and sampler == Diffusion.RFLOW_X0:
        raise ValueError(
            f"'{sampler}' is a training objective (Diffusion), not a Sampler: sample it with "
            f"'{Sampler.RFLOW}', or build its training scheduler with training_scheduler."
        )
    sampler = _member(Sampler, sampler, "sampler")
    variance_type = _member(VarianceType, variance_type, "variance_type")
    timestep_spacing = _member(TimestepSpacing, timestep_spacing, "timestep_spacing")
    ddim_eta = ddim.check_eta(ddim_eta)
    num_train_timesteps = int(num_train_timesteps)
    steps = DEFAULT_STEPS[sampler] or num_train_timesteps
    steps = steps if num_inference_steps is None else int(num_inference_steps)
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {steps}.")
    if sampler == Sampler.RFLOW:
        scheduler = _rflow_scheduler(num_train_timesteps, timestep_sampling, timestep_loc, timestep_scale)
    else:
        schedule_config = {
            "num_train_timesteps": num_train_timesteps,
            "schedule": str(schedule),
            "beta_start": float(beta_start),
            "beta_end": float(beta_end),
        }
        if sampler == Sampler.DDPM:
            scheduler = DDPMScheduler64(
                variance_type=variance_type.value, prediction_type="sample", clip_sample=False, **schedule_config
            )
        else:
            scheduler = DDIMScheduler64(
                prediction_type="sample",
                clip_sample=False,
                timestep_spacing=timestep_spacing,
                eta=ddim_eta,
                **schedule_config,
            )
        scheduler.schedule_config = {**schedule_config, "variance_type": variance_type.value}
    scheduler.set_timesteps(steps)
    return scheduler


def _rflow_scheduler(num_train_timesteps: int, timestep_sampling: str, loc: float, scale: float) -> RFlowScheduler:
    """MONAI's `RFlowScheduler` on discrete timesteps, with its ``schedule_config``."""
    method = _member(TimestepSampling, timestep_sampling, "timestep_sampling (MONAI's sample_method)").value
    scheduler = RFlowScheduler(
        num_train_timesteps=num_train_timesteps,
        use_discrete_timesteps=True,
        sample_method=method,
        loc=float(loc),
        scale=float(scale),
    )
    scheduler.schedule_config = {
        "num_train_timesteps": num_train_timesteps,
        "timestep_sampling": method,
        "timestep_loc": float(loc),
        "timestep_scale": float(scale),
    }
    return scheduler


def training_scheduler(diffusion: str = Diffusion.DDPM, **schedule: Any) -> Scheduler:
    """The scheduler a model trains with under objective ``diffusion`` (`Diffusion`).

    It noises the training inputs (``add_noise``), draws their timesteps (RFlow) and is recorded
    (``schedule_config``); it also samples, as the objective's default sampler: DDPM over all T
    steps (``"ddpm"``), RFlow in 30 steps (``"rflow"``, ``"rflow_x0"``).

    Args:
        diffusion: ``"ddpm"``, ``"rflow"`` or ``"rflow_x0"``.
        schedule: the training schedule, as `make_scheduler`'s keyword arguments: ``num_train_timesteps``;
            ``schedule``, ``beta_start``, ``beta_end``, ``variance_type`` (DDPM);
            ``timestep_sampling``, ``timestep_loc``, ``timestep_scale`` (RFlow).
    """
    diffusion = _member(Diffusion, diffusion, "diffusion")
    return make_scheduler(Sampler.DDPM if diffusion == Diffusion.DDPM else Sampler.RFLOW, None, **schedule)


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
