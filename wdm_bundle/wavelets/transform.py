"""`HaarWavelet3D`: image <-> scaled wavelet coefficients, the space the diffusion model lives in."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wdm_bundle.wavelets.constants import LLL_INDEX
from wdm_bundle.wavelets.functional import dwt3d, dwt3d_levels, idwt3d, idwt3d_levels

__all__ = ["HaarWavelet3D", "ImageSpace", "WAVELET_LEVELS", "check_levels"]


#: Wavelet levels `HaarWavelet3D` accepts (``wavelet_levels`` of the configs).
WAVELET_LEVELS = (1, 2, 3)


def check_levels(levels: object, name: str = "levels") -> int:
    """``levels`` as an int in `WAVELET_LEVELS`; ValueError naming the value otherwise."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels not in WAVELET_LEVELS:
        raise ValueError(f"{name} must be one of {list(WAVELET_LEVELS)}, got {levels!r:.80}.")
    return int(levels)


class HaarWavelet3D(nn.Module):
    """Encode images to wavelet coefficients for diffusion and decode them back.

    ``encode`` = `dwt3d` then divide every LLL band by ``lll_scale``; ``decode`` undoes both.
    The orthonormal LLL band of data in [-1, 1] spans [-2*sqrt2, 2*sqrt2]; the reference WDM
    code divides it by 3 so that all bands lie roughly in [-1, 1] like the diffusion noise.
    ``torch.jit.script`` compiles it (``encode``, ``decode`` and ``forward``).

    With ``levels`` L > 1 the transform is the full L-level wavelet packet (`dwt3d_levels`: `dwt3d`
    applied L times, every band split again): ``8**L`` bands per image channel at ``1/2**L`` size.
    Each band is divided by ``lll_scale`` once per level at which it took the LLL band (the Kronecker
    product of the one-level scale vectors): at L = 2 band (LLL, LLL) by ``lll_scale**2``, (LLL, k) and
    (k, LLL) by ``lll_scale``, the rest by 1 (`band_divisors`). L = 1 is the paper's transform.

    Args:
        lll_scale: divisor of the LLL band (the reference uses 3.0; 1.0 disables the scaling).
        levels: wavelet levels, 1 (the paper), 2 or 3.
    """

    __constants__ = ["lll_index"]  # TorchScript reads these class attributes, not module globals
    bands = 8  # coefficient channels per image channel at one level (instances: 8**levels)
    scale = 2  # image size / coefficient size at one level (instances: 2**levels)
    lll_index = LLL_INDEX

    def __init__(self, lll_scale: float = 3.0, levels: int = 1) -> None:
        super().__init__()
        if lll_scale <= 0:
            raise ValueError(f"lll_scale must be positive, got {lll_scale}.")
        self.lll_scale = float(lll_scale)
        self.levels: int = check_levels(levels)
        self.bands: int = 8**self.levels
        self.scale: int = 2**self.levels

    def _scale_lll(self, coeffs: torch.Tensor, factor: float) -> torch.Tensor:
        if factor == 1.0:
            return coeffs
        b, c8, d, h, w = coeffs.shape
        scale = torch.ones(8, dtype=coeffs.dtype, device=coeffs.device)
        scale[self.lll_index] = factor
        return (coeffs.reshape(b, c8 // 8, 8, d, h, w) * scale.view(1, 1, 8, 1, 1, 1)).reshape(coeffs.shape)

    def _band_factors(self, factor: float) -> torch.Tensor:
        """(8**levels,) float64 CPU: ``factor`` to the power of the number of levels at which each band took LLL."""
        cpu = torch.device("cpu")
        # torch.full, not item assignment or torch.tensor: TorchScript would round the factor through float32
        full = torch.full([8], factor, dtype=torch.float64, device=cpu)
        one = torch.where(torch.arange(8, device=cpu) == self.lll_index, full, torch.ones_like(full))
        out = one
        for _ in range(self.levels - 1):
            out = torch.kron(out, one)
        return out

    def _scale_bands(self, coeffs: torch.Tensor, factor: float) -> torch.Tensor:
        if self.levels == 1:
            return self._scale_lll(coeffs, factor)  # the paper's transform, bit for bit as before
        if factor == 1.0:
            return coeffs
        n = self.bands
        b, cn, d, h, w = coeffs.shape
        scale = self._band_factors(factor).to(dtype=coeffs.dtype, device=coeffs.device)
        return (coeffs.reshape(b, cn // n, n, d, h, w) * scale.view(1, 1, n, 1, 1, 1)).reshape(coeffs.shape)

    def band_divisors(self) -> torch.Tensor:
        """(8**levels,) float64: what `encode` divides each band of an image channel by."""
        return self._band_factors(self.lll_scale)

    @torch.jit.export
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) images -> (B, 8**L * C, D/2**L, H/2**L, W/2**L) scaled coefficients."""
        if self.levels == 1:
            return self._scale_lll(dwt3d(images), 1.0 / self.lll_scale)
        return self._scale_bands(dwt3d_levels(images, self.levels), 1.0 / self.lll_scale)

    @torch.jit.export
    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, 8**L * C, d, h, w) scaled coefficients -> (B, C, 2**L * d, 2**L * h, 2**L * w) images."""
        if self.levels == 1:
            return idwt3d(self._scale_lll(coeffs, self.lll_scale))
        return idwt3d_levels(self._scale_bands(coeffs, self.lll_scale), self.levels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)

    def coefficient_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """(C, D, H, W) -> (8**L * C, D/2**L, H/2**L, W/2**L)."""
        c, *spatial = image_shape
        return (self.bands * int(c), *(int(s) // self.scale for s in spatial))

    def extra_repr(self) -> str:
        return f"lll_scale={self.lll_scale}, levels={self.levels}"


class ImageSpace(nn.Module):
    """Identity coder: diffusion directly on images, for the image-space 3D DDPM baseline of the paper."""

    bands = 1
    scale = 1

    @torch.jit.export
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    @torch.jit.export
    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        return coeffs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def coefficient_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(s) for s in image_shape)
