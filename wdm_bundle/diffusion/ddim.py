"""DDIM timestep spacings: which N of the T training timesteps a DDIM chain visits, and where each step lands.

MONAI's `DDIMScheduler` lists ``linspace(T - 1, 0, N)`` but steps from t to t - T // N; for few steps these
disagree (N = 2, T = 1000: the model is called at t = 0 on a sample at level 499). The ``leading`` and
``trailing`` spacings (as named in diffusers, Lin et al. 2024, "Common diffusion noise schedules and sample steps
are flawed") list timesteps that the chain actually visits: each step goes to the next listed timestep and the
last one to x0 (alpha_bar = 1 with ``set_alpha_to_one``).

``eta`` (DDIM paper, eq. 16) sets how stochastic each step is: 0 = deterministic DDIM, 1 = the DDPM posterior
of the spaced chain (ancestral sampling on the N visited timesteps).
"""

from __future__ import annotations

import torch

__all__ = ["LINSPACE", "LEADING", "TRAILING", "SPACINGS", "spaced_timesteps", "check_eta", "SpacedDDIM"]

#: MONAI's timesteps and step (unchanged); (N - 1) s, ..., s, 0 with s = T // N; round(T - i T / N) - 1.
LINSPACE, LEADING, TRAILING = "linspace", "leading", "trailing"
SPACINGS = (LINSPACE, LEADING, TRAILING)


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str) -> list[int]:
    """The N = ``num_inference_steps`` descending timesteps of ``spacing`` among T = ``num_train_timesteps``.

    ``linspace``: ``round(linspace(T - 1, 0, N))`` (MONAI's); ``leading``: (N - 1) s, ..., s, 0 with s = T // N;
    ``trailing``: round(T - i T / N) - 1 for i = 0 .. N - 1 (round half to even, as diffusers' numpy), which starts
    at the pure-noise level T - 1 (N = 2, T = 1000: [999, 499]).
    """
    t_max, n = int(num_train_timesteps), int(num_inference_steps)
    if not 1 <= n <= t_max:
        raise ValueError(f"num_inference_steps must be in [1, {t_max}], got {n}.")
    if spacing == LINSPACE:
        return torch.linspace(t_max - 1, 0, n).round().long().tolist()
    if spacing == LEADING:
        stride = t_max // n
        return list(range((n - 1) * stride, -1, -stride))
    if spacing == TRAILING:
        return [round(t_max * (n - i) / n) - 1 for i in range(n)]
    raise ValueError(f"{spacing!r} is not a valid TimestepSpacing; use one of {', '.join(SPACINGS)}.")


def check_eta(eta: float) -> float:
    """``eta`` as a float if it is in the closed range [0, 1] (0: deterministic DDIM, 1: DDPM-like), else a
    ValueError."""
    value = float(eta)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(
            f"ddim_eta (DDIM's eta) must be in [0, 1] (0: deterministic DDIM, 1: ancestral DDPM-like steps), got {eta}."
        )
    return value


class SpacedDDIM:
    """Mixin for MONAI's `DDIMScheduler` (precedes it in the MRO): timesteps and steps of ``timestep_spacing``.

    ``linspace`` keeps MONAI's `set_timesteps` and `step` bit for bit. ``leading``/``trailing``: `set_timesteps`
    lists `spaced_timesteps` and `step` goes from t to `previous_timestep` (the next listed one, -1 = x0 after the
    last), with MONAI's formulas (12) and (16) of the DDIM paper and its 0-d float64 coefficients.
    ``eta`` (`check_eta`): the default of `step`'s ``eta``, so that samplers calling ``step(x0, t, x,
    generator=g)`` take stochastic steps; 0 (deterministic) unless set.
    """

    timestep_spacing: str = LINSPACE
    eta: float = 0.0
    num_train_timesteps: int
    num_inference_steps: int
    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """MONAI's (validation, ``linspace``), then the timesteps (N,) of ``leading``/``trailing``."""
        super().set_timesteps(num_inference_steps, device)  # type: ignore[misc]
        if self.timestep_spacing == LINSPACE:
            return
        if self.steps_offset:  # type: ignore[attr-defined]
            raise ValueError(f"timestep_spacing '{self.timestep_spacing}' takes no steps_offset.")
        times = spaced_timesteps(self.num_train_timesteps, num_inference_steps, self.timestep_spacing)
        self.timesteps = torch.tensor(times, dtype=torch.long, device=device)

    def previous_timestep(self, timestep: int) -> int:
        """Where `step` goes from ``timestep``: MONAI's t - T // N (``linspace``), else the largest listed
        timestep below it (-1: x0)."""
        timestep = int(timestep)
        if self.timestep_spacing == LINSPACE:
            return timestep - self.num_train_timesteps // self.num_inference_steps
        return max((t for t in self.timesteps.tolist() if t < timestep), default=-1)

    def _x0_and_eps(self, output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor) -> tuple:
        """The predicted x0 and noise of a model ``output`` at ``sample`` (B, ...), as MONAI's step."""
        kind = self.prediction_type  # type: ignore[attr-defined]
        if kind == "epsilon":
            return (sample - (1 - alpha_bar) ** 0.5 * output) / alpha_bar**0.5, output
        if kind == "sample":
            return output, (sample - alpha_bar**0.5 * output) / (1 - alpha_bar) ** 0.5
        return alpha_bar**0.5 * sample - (1 - alpha_bar) ** 0.5 * output, (
            alpha_bar**0.5 * output + (1 - alpha_bar) ** 0.5 * sample
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM step of ``sample`` (B, ...) at ``timestep`` to `previous_timestep`: (x_prev, predicted x0).

        ``eta`` in [0, 1] (default: the scheduler's ``eta``): sigma_t = eta sqrt((1 - a_prev) / (1 - a_t))
        sqrt(1 - a_t / a_prev) and x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma_t^2) eps + sigma_t z, z drawn
        from ``generator`` when eta > 0.
        """
        eta = check_eta(self.eta if eta is None else eta)
        if self.timestep_spacing == LINSPACE:
            return super().step(model_output, timestep, sample, eta, generator)  # type: ignore[misc]
        prev = self.previous_timestep(timestep)
        alpha_bar = self.alphas_cumprod[int(timestep)]
        alpha_bar_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        x0, eps = self._x0_and_eps(model_output, sample, alpha_bar)
        if self.clip_sample:  # type: ignore[attr-defined]
            x0 = torch.clamp(x0, *self.clip_sample_values)  # type: ignore[attr-defined]
        std = eta * self._get_variance(int(timestep), prev) ** 0.5  # type: ignore[attr-defined]
        x_prev = alpha_bar_prev**0.5 * x0 + (1 - alpha_bar_prev - std**2) ** 0.5 * eps
        if eta > 0:
            noise = torch.randn(model_output.shape, dtype=model_output.dtype, generator=generator, device=sample.device)
            x_prev = x_prev + std * noise
        return x_prev, x0
