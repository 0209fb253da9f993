"""`HaarWavelet3D`: image <-> scaled wavelet coefficients, the space the diffusion model lives in."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wdm_bundle.wavelets.constants import LLL_INDEX
from wdm_bundle.wavelets.functional import dwt3d, idwt3d

__all__ = ["HaarWavelet3D", "ImageSpace"]


class HaarWavelet3D(nn.Module):
    """Encode images to wavelet coefficients for diffusion and decode them back.

    ``encode`` = `dwt3d` then divide every LLL band by ``lll_scale``; ``decode`` undoes both.
    The orthonormal LLL band of data in [-1, 1] spans [-2*sqrt2, 2*sqrt2]; the reference WDM
    code divides it by 3 so that all bands lie roughly in [-1, 1] like the diffusion noise.
    ``torch.jit.script`` compiles it (``encode``, ``decode`` and ``forward``).

    Args:
        lll_scale: divisor of the LLL band (the reference uses 3.0; 1.0 disables the scaling).
    """

    __constants__ = ["lll_index"]  # TorchScript reads these class attributes, not module globals
    bands = 8  # coefficient channels per image channel
    scale = 2  # image size / coefficient size
    lll_index = LLL_INDEX

    def __init__(self, lll_scale: float = 3.0) -> None:
        super().__init__()
        if lll_scale <= 0:
            raise ValueError(f"lll_scale must be positive, got {lll_scale}.")
        self.lll_scale = float(lll_scale)

    def _scale_lll(self, coeffs: torch.Tensor, factor: float) -> torch.Tensor:
        if factor == 1.0:
            return coeffs
        b, c8, d, h, w = coeffs.shape
        scale = torch.ones(8, dtype=coeffs.dtype, device=coeffs.device)
        scale[self.lll_index] = factor
        return (coeffs.reshape(b, c8 // 8, 8, d, h, w) * scale.view(1, 1, 8, 1, 1, 1)).reshape(coeffs.shape)

    @torch.jit.export
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) images -> (B, 8C, D/2, H/2, W/2) scaled coefficients."""
        return self._scale_lll(dwt3d(images), 1.0 / self.lll_scale)

    @torch.jit.export
    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, 8C, d, h, w) scaled coefficients -> (B, C, 2d, 2h, 2w) images."""
        return idwt3d(self._scale_lll(coeffs, self.lll_scale))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)

    def coefficient_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """(C, D, H, W) -> (8C, D/2, H/2, W/2)."""
        c, *spatial = image_shape
        return (self.bands * int(c), *(int(s) // self.scale for s in spatial))

    def extra_repr(self) -> str:
        return f"lll_scale={self.lll_scale}"


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
