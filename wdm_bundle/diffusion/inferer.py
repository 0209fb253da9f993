"""`WaveletDiffusionInferer`: training forward and sampling in wavelet space, after MONAI's `DiffusionInferer`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler
from torch import nn
from tqdm.auto import tqdm

from wdm_bundle.wavelets import HaarWavelet3D

__all__ = ["WaveletDiffusionInferer", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside DataParallel/DistributedDataParallel/compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


class WaveletDiffusionInferer(DiffusionInferer):
    """Diffusion on wavelet coefficients with x0 prediction and image-space clamping.

    Training (``__call__``) takes clean coefficients from `WaveletPrepareBatch`, noises them with
    the scheduler and returns the network's x0 prediction; condition coefficients, if any, are
    concatenated on the channel axis. Sampling (``sample``) clamps every predicted x0 in image
    space (IDWT -> clamp to ``data_range`` -> DWT), as the reference WDM code does.

    Args:
        scheduler: a MONAI scheduler with ``prediction_type="sample"`` (see `make_scheduler`).
        data_range: (min, max) of the images: (-1, 1) for WDM, (0, 1) for cWDM.
        wavelet: coder between images and coefficients; default: the network's ``.wavelet``.
    """

    def __init__(
        self, scheduler: Scheduler, data_range: Sequence[float] = (-1.0, 1.0), wavelet: HaarWavelet3D | None = None
    ) -> None:
        super().__init__(scheduler)
        if scheduler.prediction_type != "sample":
            raise ValueError(f"the wavelet model predicts x0: scheduler.prediction_type must be 'sample', got "
                             f"'{scheduler.prediction_type}'.")
        if len(data_range) != 2 or data_range[0] >= data_range[1]:
            raise ValueError(f"data_range must be (min, max) with min < max, got {data_range}.")
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.wavelet = wavelet

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
        """Noise clean coefficients ``inputs`` (B, 8C, d, h, w) to step ``timesteps`` (B,) and predict x0."""
        mode = "crossattn" if condition is None else "concat"
        return super().__call__(inputs, diffusion_model, noise=noise, timesteps=timesteps, condition=condition, mode=mode)

    def clamp_x0(self, x0: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """IDWT -> clamp to ``data_range`` -> DWT."""
        coder = self._coder(model)
        return coder.encode(coder.decode(x0).clamp(*self.data_range))

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
        x = input_noise
        batch = x.shape[0]
        steps = tqdm(scheduler.timesteps, desc="denoising", leave=False, disable=not verbose)
        for t in steps:
            model_input = x if conditioning is None else torch.cat([x, conditioning], dim=1)
            timesteps = torch.full((batch,), int(t), device=x.device, dtype=torch.long)
            x0 = diffusion_model(model_input, timesteps=timesteps).float()
            if clamp:
                x0 = self.clamp_x0(x0, diffusion_model)
            x, _ = scheduler.step(x0, int(t), x, generator=generator)
        if not decode:
            return x
        return self._coder(diffusion_model).decode(x).clamp(*self.data_range)
