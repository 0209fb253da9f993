"""`WaveletDiffusionInferer`: training forward and sampling in wavelet space, after MONAI's `DiffusionInferer`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import RFlowScheduler, Scheduler
from torch import nn
from tqdm.auto import tqdm

from wdm_bundle.diffusion.schedulers import Diffusion, check_sampler, diffusion_of, velocity_from_x0
from wdm_bundle.wavelets import HaarWavelet3D

__all__ = ["WaveletDiffusionInferer", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside DataParallel/DistributedDataParallel/compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


class WaveletDiffusionInferer(DiffusionInferer):
    """Diffusion on wavelet coefficients with image-space clamping of x0.

    Training (``__call__``) takes clean coefficients from `WaveletPrepareBatch`, noises them with
    the scheduler and returns the network's prediction (x0, or the velocity x0 - noise for
    rectified flow; for ``diffusion="rflow_x0"`` the velocity computed from the predicted x0);
    condition coefficients, if any, are concatenated on the channel axis.
    Sampling (``sample``) clamps every predicted x0 in image space (IDWT -> clamp to
    ``data_range`` -> DWT), as the reference WDM code does. For rectified flow the x0 implied by
    the velocity, ``x_t + v t/T``, is clamped and the velocity recomputed from it before the
    Euler step, so the last step (to t = 0) lands exactly on a clamped x0 as DDPM/DDIM do.

    Under an ambient ``torch.autocast`` only the network runs in low precision; the clamp, the
    wavelet transforms and the scheduler step run in float32.

    Args:
        scheduler: a MONAI scheduler with ``prediction_type="sample"`` or an `RFlowScheduler`
            (see `make_scheduler`).
        data_range: (min, max) of the images: (-1, 1) for WDM, (0, 1) for cWDM.
        wavelet: coder between images and coefficients; default: the network's ``.wavelet``.
        diffusion: the objective the network was trained with (`Diffusion`), which fixes what its
            output is; default: ``"rflow"`` for an `RFlowScheduler`, else ``"ddpm"``. Must suit
            the scheduler.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        data_range: Sequence[float] = (-1.0, 1.0),
        wavelet: HaarWavelet3D | None = None,
        diffusion: str | None = None,
    ) -> None:
        super().__init__(scheduler)
        if scheduler.prediction_type != "sample" and not isinstance(scheduler, RFlowScheduler):
            raise ValueError(
                f"the wavelet model predicts x0 (or a rectified-flow velocity): scheduler.prediction_type "
                f"must be 'sample' or the scheduler an RFlowScheduler, got '{scheduler.prediction_type}'."
            )
        if len(data_range) != 2 or data_range[0] >= data_range[1]:
            raise ValueError(f"data_range must be (min, max) with min < max, got {data_range}.")
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.wavelet = wavelet
        self.diffusion = Diffusion(diffusion_of(scheduler) if diffusion is None else diffusion).value
        check_sampler(self.diffusion, scheduler, "the network")

    def _coder(self, model: nn.Module) -> HaarWavelet3D:
        return self.wavelet if self.wavelet is not None else unwrap_model(model).wavelet

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise clean coefficients ``inputs`` (B, 8C, d, h, w) to step ``timesteps`` (B,); predict x0 (or velocity)."""
        mode = "crossattn" if condition is None else "concat"
        out = super().__call__(
            inputs, diffusion_model, noise=noise, timesteps=timesteps, condition=condition, mode=mode
        )
        if self.diffusion != Diffusion.RFLOW_X0:
            return out
        x_t = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        return velocity_from_x0(out, x_t, timesteps, self.scheduler.num_train_timesteps)

    def clamp_x0(self, x0: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """IDWT -> clamp to ``data_range`` -> DWT."""
        coder = self._coder(model)
        return coder.encode(coder.decode(x0).clamp(*self.data_range))

    def denoise_step(
        self,
        x: torch.Tensor,
        t: int,
        t_next: int,
        diffusion_model: nn.Module,
        scheduler: Scheduler,
        conditioning: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        clamp: bool = True,
    ) -> torch.Tensor:
        """One reverse step of `sample`: float32 coefficients ``x`` (B, 8C, d, h, w) at timestep ``t`` -> the next
        sample (``t_next`` is used by rectified flow only; DDPM/DDIM step to their scheduler's previous timestep)."""
        model_input = x if conditioning is None else torch.cat([x, conditioning.to(x.dtype)], dim=1)
        timesteps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = diffusion_model(model_input, timesteps=timesteps).float()
        with torch.autocast(x.device.type, enabled=False):
            if isinstance(scheduler, RFlowScheduler):
                frac = t / scheduler.num_train_timesteps
                x0_output = self.diffusion != Diffusion.RFLOW
                x0 = out if x0_output else x + out * frac  # x_t = x0 - (t/T) v
                if clamp:
                    x0 = self.clamp_x0(x0, diffusion_model)
                if clamp or x0_output:
                    out = (x0 - x) / frac
                return scheduler.step(out, t, x, t_next)[0]
            x0 = self.clamp_x0(out, diffusion_model) if clamp else out
            return scheduler.step(x0, t, x, generator=generator)[0]

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        input_noise: torch.Tensor,
        diffusion_model: nn.Module,
        scheduler: Scheduler | None = None,
        conditioning: torch.Tensor | None = None,
        verbose: bool = True,
        generator: torch.Generator | None = None,
        clamp: bool = True,
        decode: bool = True,
    ) -> torch.Tensor:
        """Denoise ``input_noise`` (B, 8C, d, h, w) over the scheduler's timesteps.

        Args:
            conditioning: (B, 8k [+ extra], d, h, w) condition channels appended to x_t each step.
            generator: random source of the DDPM ancestral noise (DDIM with eta=0 draws none).
            clamp: clamp each predicted x0 in image space.
            decode: return images (B, C, 2d, 2h, 2w) clamped to ``data_range`` instead of coefficients.
        """
        scheduler = scheduler or self.scheduler
        check_sampler(self.diffusion, scheduler, "the network")
        if isinstance(scheduler, RFlowScheduler) and not hasattr(scheduler, "num_inference_steps"):
            raise ValueError("the RFlowScheduler has no timesteps; call set_timesteps (make_scheduler does).")
        x = input_noise.float()
        times = [int(t) for t in scheduler.timesteps]
        steps = tqdm(list(zip(times, times[1:] + [0])), desc="denoising", leave=False, disable=not verbose)
        for t, t_next in steps:
            x = self.denoise_step(x, t, t_next, diffusion_model, scheduler, conditioning, generator, clamp)
        if not decode:
            return x
        with torch.autocast(x.device.type, enabled=False):
            return self._coder(diffusion_model).decode(x).clamp(*self.data_range)
