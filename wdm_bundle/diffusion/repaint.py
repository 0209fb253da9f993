"""Zero-shot inpainting with an unconditional wavelet diffusion model: RePaint (Lugmayr et al., CVPR 2022).

At every reverse step the known region (mask 0) is the input noised to the step's level, q(x_{t-1} | x0), and
the region to inpaint (mask 1) is the model's reverse step p(x_{t-1} | x_t); "jumps" re-noise the result j
levels back, q(x_{t+j} | x_t), and redo those steps, so that the generated region harmonises with the known one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from torch import nn
from tqdm.auto import tqdm

from wdm_bundle.diffusion.inferer import WaveletDiffusionInferer, unwrap_model
from wdm_bundle.diffusion.schedulers import Diffusion, TimestepSpacing
from wdm_bundle.wavelets import HaarWavelet3D

__all__ = ["RePaintInferer", "resampling_schedule"]

#: The level of the clean sample in `resampling_schedule` (after the reverse step at timestep 0).
CLEAN = -1


def resampling_schedule(timesteps: Sequence[int], jump_length: int = 1, jump_n_sample: int = 1) -> list[int]:
    """The noise levels RePaint visits, in order: scheduler ``timesteps`` (descending), ``CLEAN`` (-1) = x0.

    Each reverse step goes from a level to the next lower one; a jump goes ``jump_length`` levels up. As in
    RePaint's ``get_schedule_jump`` (and diffusers' ``RePaintScheduler``), counting reverse steps from the end
    (j = 0 for the last, the step at timestep ``timesteps[-1]``), after step j for j = 0, L, 2L, ... < N - L the
    chain jumps back L = ``jump_length`` levels, ``jump_n_sample - 1`` times each, before going on.
    ``jump_n_sample = 1`` is plain sampling: ``[*timesteps, -1]``.
    """
    levels = [int(t) for t in timesteps] + [CLEAN]
    n = len(levels) - 1
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"jump_length and jump_n_sample must be >= 1, got {jump_length}, {jump_n_sample}.")
    if jump_n_sample > 1 and jump_length >= n:
        raise ValueError(f"jump_length must be < the {n} sampling steps for jumps to happen, got {jump_length}.")
    jumps = {j: jump_n_sample - 1 for j in range(0, n - jump_length, jump_length)}
    k, states = 0, [0]  # k: reverse steps done, levels[k] the current level
    while k < n:
        k += 1
        states.append(k)
        if jumps.get(n - k, 0) > 0:
            jumps[n - k] -= 1
            k -= jump_length
            states.append(k)
    return [levels[k] for k in states]


class RePaintInferer(WaveletDiffusionInferer):
    """`WaveletDiffusionInferer` that also inpaints (`inpaint`) with an unconditional x0-predicting model.

    The chain runs on wavelet coefficients, but known and generated regions are combined in IMAGE space:
    decode both coefficient volumes, take each voxel from one or the other by the image mask, encode back. This is
    exact because the orthonormal Haar DWT (with its LLL scaling) is linear and invertible: the combined
    coefficients decode to an image whose known voxels are those of the noised input, q(x_t | x0) decoded, and
    whose other voxels are the model's, to float32 rounding. A mask on the coefficients instead would have to
    decide, for each 2x2x2 block crossing the mask border, whether all its 8 voxels are known or generated:
    every such coefficient mixes both.

    Samplers: DDPM, ancestral over all T steps (MONAI's DDPM step always goes from t to t - 1), and DDIM
    (deterministic, eta = 0, any number of steps N, at the timesteps of `timesteps_of`; the jumps' re-noising is
    then the only randomness after the start noise). Rectified flow is not supported. Random draws, all from
    ``generator``: the start noise, then per reverse step the known region's noise first and the ancestral noise
    (DDPM, t > 0) second, one draw per jump. When no voxel is known (mask all 1) the known noise is not drawn
    and no blending is done, so ``jump_n_sample = 1`` then gives exactly `sample` with the same generator
    (DDPM; DDIM runs at other timesteps than `sample`'s).

    Args:
        scheduler, args, kwargs: those of `WaveletDiffusionInferer` (``data_range``, ``wavelet``, ``diffusion``, which
            must be ``"ddpm"``).
        jump_length: levels L each jump goes back (RePaint: 10 of T = 250 steps).
        jump_n_sample: passes r over each jumped segment (RePaint: 10); 1 = no resampling.
    """

    def __init__(
        self, scheduler: Scheduler, *args: Any, jump_length: int = 10, jump_n_sample: int = 10, **kwargs: Any
    ) -> None:
        super().__init__(scheduler, *args, **kwargs)
        if self.diffusion != Diffusion.DDPM:
            raise ValueError(f"RePaint needs a model trained with diffusion='ddpm', got '{self.diffusion}'.")
        self.jump_length, self.jump_n_sample = int(jump_length), int(jump_n_sample)
        resampling_schedule(self.timesteps_of(scheduler), self.jump_length, self.jump_n_sample)  # validates

    @staticmethod
    def timesteps_of(scheduler: Scheduler) -> list[int]:
        """The timesteps RePaint calls the model at: all T for DDPM (refusing fewer: MONAI's DDPM step always goes
        from t to t - 1); for DDIM with N steps and ``timestep_spacing`` ``"leading"`` or ``"trailing"`` the
        scheduler's own timesteps (each step lands on the next); with ``"linspace"`` (MONAI's), (N - 1) s, ..., s, 0
        with s = T // N, the levels MONAI's DDIM step (from t to t - s) lands on, so the known region is noised to the
        level the chain is at. (MONAI's own DDIM timesteps, ``linspace(T - 1, 0, N)``, are not these: `sample` with
        "linspace" DDIM calls the model at other steps.)"""
        t_max = scheduler.num_train_timesteps
        if isinstance(scheduler, DDPMScheduler):
            times = [int(t) for t in scheduler.timesteps]
            if times != list(range(t_max - 1, -1, -1)):
                raise ValueError(
                    f"RePaint with DDPM needs all {t_max} steps (MONAI's DDPM step goes from t to t - 1), got "
                    f"{len(times)}; use the 'ddim' sampler for fewer steps."
                )
            return times
        if not isinstance(scheduler, DDIMScheduler):
            raise ValueError(f"RePaint samples with DDPM or DDIM, got {type(scheduler).__name__}.")
        if float(scheduler.final_alpha_cumprod) != 1.0:
            raise ValueError("RePaint with DDIM needs set_alpha_to_one=True (its last step must reach x0).")
        if getattr(scheduler, "timestep_spacing", TimestepSpacing.LINSPACE) != TimestepSpacing.LINSPACE:
            return [int(t) for t in scheduler.timesteps]  # "leading"/"trailing": each step lands on the next
        stride = t_max // scheduler.num_inference_steps
        return list(range((scheduler.num_inference_steps - 1) * stride, -1, -stride))

    def check_inputs(self, image: torch.Tensor, mask: torch.Tensor, coder_scale: int | None = None) -> torch.Tensor:
        """Validate ``image`` (B, C, D, H, W) and ``mask`` (B or 1, 1 or C, D, H, W); return the mask as bool (B, C, ...).

        ``coder_scale``: image size / coefficient size of the model's coder (``2**wavelet_levels``; default: the
        inferer's coder's, else one DWT level's)."""
        if image.ndim != 5:
            raise ValueError(f"image must be (B, C, D, H, W), got shape {tuple(image.shape)}.")
        if not image.is_floating_point():
            raise ValueError(f"image must be floating point, got {image.dtype}.")
        if mask.ndim != 5 or mask.shape[2:] != image.shape[2:]:
            raise ValueError(f"mask {tuple(mask.shape)} must be (B, 1 or C, D, H, W) like image {tuple(image.shape)}.")
        if mask.shape[0] not in (1, image.shape[0]) or mask.shape[1] not in (1, image.shape[1]):
            raise ValueError(
                f"mask {tuple(mask.shape)}: batch must be 1 or {image.shape[0]}, channels 1 or "
                f"{image.shape[1]} (image {tuple(image.shape)})."
            )
        if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must be binary (0 = keep, 1 = inpaint); got other values.")
        if coder_scale is None:
            coder_scale = int(getattr(self.wavelet, "scale", HaarWavelet3D.scale))
        if any(s % coder_scale for s in image.shape[2:]):
            raise ValueError(
                f"image spatial size {tuple(image.shape[2:])} must be even (one DWT level)"
                if coder_scale == 2
                else f"image spatial size {tuple(image.shape[2:])} must be divisible by {coder_scale} (the DWT levels)."
            )
        lo, hi = self.data_range
        if not torch.isfinite(image).all() or image.min() < lo or image.max() > hi:
            raise ValueError(
                f"image must lie in the model's data_range [{lo}, {hi}] (normalise it as for training), got "
                f"[{float(image.min())}, {float(image.max())}]."
            )
        return (mask != 0).expand_as(image)

    @staticmethod
    def alpha_bar(scheduler: Scheduler, level: int) -> torch.Tensor:
        """alpha_bar of a noise ``level`` in float64 (1 for ``CLEAN``)."""
        return scheduler.alphas_cumprod[level] if level >= 0 else torch.tensor(1.0, dtype=torch.float64)

    def noise_known(
        self, x0: torch.Tensor, level: int, scheduler: Scheduler, generator: torch.Generator | None
    ) -> torch.Tensor:
        """A draw of q(x_level | x0) by the scheduler's ``add_noise`` (float64 coefficients); x0 itself at ``CLEAN``."""
        if level == CLEAN:
            return x0
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        timesteps = torch.full((x0.shape[0],), level, device=x0.device, dtype=torch.long)
        return scheduler.add_noise(original_samples=x0, noise=noise, timesteps=timesteps)

    def renoise(
        self, x: torch.Tensor, level: int, to: int, scheduler: Scheduler, generator: torch.Generator | None
    ) -> torch.Tensor:
        """A draw of the forward jump q(x_to | x_level) = N(sqrt(a) x_level, (1 - a) I), a = alpha_bar_to / alpha_bar_level."""
        ratio = self.alpha_bar(scheduler, to) / self.alpha_bar(scheduler, level)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return ratio.sqrt().to(x.dtype).item() * x + (1.0 - ratio).sqrt().to(x.dtype).item() * noise

    def blend(self, known: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """Coefficients whose image is ``generated``'s where ``mask`` (B, C, D, H, W bool) and ``known``'s elsewhere."""
        coder = self._coder(model)
        return coder.encode(torch.where(mask, coder.decode(generated), coder.decode(known)))

    def reverse_step(
        self,
        x: torch.Tensor,
        level: int,
        to: int,
        known_x0: torch.Tensor,
        mask: torch.Tensor,
        diffusion_model: nn.Module,
        scheduler: Scheduler,
        generator: torch.Generator | None = None,
        clamp: bool = True,
    ) -> torch.Tensor:
        """One RePaint step from ``level`` to ``to`` (the next level): known region ~ q(x_to | x0), the rest
        the model's step (`denoise_step`), combined in image space (`blend`). ``known_x0``: the input's coefficients."""
        known = None  # nothing known (mask all 1): no known noise drawn, plain sampling
        if not mask.all():
            with torch.autocast(x.device.type, enabled=False):
                known = self.noise_known(known_x0, to, scheduler, generator)
        generated = self.denoise_step(x, level, max(to, 0), diffusion_model, scheduler, None, generator, clamp)
        if known is None:
            return generated
        with torch.autocast(x.device.type, enabled=False):
            return self.blend(known, generated, mask, diffusion_model)

    @torch.no_grad()
    def inpaint(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        diffusion_model: nn.Module,
        scheduler: Scheduler | None = None,
        generator: torch.Generator | None = None,
        clamp: bool = True,
        verbose: bool = True,
    ) -> torch.Tensor:
        """Fill the voxels where ``mask`` is 1 in ``image`` (B, C, D, H, W), in ``data_range``.

        Returns the image (``image``'s dtype): the sample clamped to ``data_range`` inside the mask, ``image``
        bit for bit outside. ``scheduler``: DDPM over all T steps or DDIM (default: the inferer's).
        """
        scheduler = scheduler or self.scheduler
        times = self.timesteps_of(scheduler)
        coder = self._coder(diffusion_model)
        mask = self.check_inputs(image, mask, int(getattr(coder, "scale", HaarWavelet3D.scale)))
        fn = getattr(unwrap_model(diffusion_model), "check_image_size", None)
        if fn is not None:
            fn(image.shape[2:], "image")
        with torch.autocast(image.device.type, enabled=False):
            known_x0 = coder.encode(image.float())
        x = torch.randn(known_x0.shape, generator=generator, device=known_x0.device, dtype=known_x0.dtype)
        levels = resampling_schedule(times, self.jump_length, self.jump_n_sample)
        moves = tqdm(list(zip(levels, levels[1:])), desc="inpainting", leave=False, disable=not verbose)
        for level, to in moves:
            if to > level:
                with torch.autocast(x.device.type, enabled=False):
                    x = self.renoise(x, level, to, scheduler, generator)
                continue
            x = self.reverse_step(x, level, to, known_x0, mask, diffusion_model, scheduler, generator, clamp)
        with torch.autocast(x.device.type, enabled=False):
            out = coder.decode(x).clamp(*self.data_range).to(image.dtype)
        return torch.where(mask, out, image)
