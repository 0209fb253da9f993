"""Orthonormal 3D Haar wavelet transform (one level) as an 8x8 matrix on each 2x2x2 block.

MONAI has no wavelet transform, so this is our own. Each of the 8 sub-band filters is a
2x2x2 kernel with entries +-1/(2*sqrt(2)); together they form an orthonormal 8x8 matrix acting
on the 8 voxels of each non-overlapping 2x2x2 block. The DWT gathers the blocks (one strided
copy) and multiplies by that matrix; the IDWT multiplies by its transpose and scatters back.
This PyTorch path runs on any device and dtype and is differentiable. CPU float32/float64
tensors go through a one-pass C kernel instead (`wdm_bundle.wavelets.native`, same numbers,
same gradients) when a C compiler is available; ``scripts/benchmark.py`` times both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from wdm_bundle.wavelets import native
from wdm_bundle.wavelets.constants import SUBBANDS

__all__ = ["haar_filters", "dwt3d", "idwt3d", "pad_to_multiple", "crop_padding"]


def haar_filters(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Return the 8 analysis filters, shape (8, 1, 2, 2, 2), in `SUBBANDS` order.

    Band index ``4*d + 2*h + w`` where each bit is 0 for low-pass (L) and 1 for high-pass (H),
    the first letter being the depth axis. Low-pass is ``(a + b)/sqrt2`` and high-pass
    ``(a - b)/sqrt2`` of each pair of neighbours, as in PyWavelets' ``haar``.
    """
    lo = torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2.0)
    hi = torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2.0)
    pair = (lo, hi)
    filters = torch.stack(
        [torch.einsum("i,j,k->ijk", pair[int(b[0] == "H")], pair[int(b[1] == "H")], pair[int(b[2] == "H")]) for b in SUBBANDS]
    )
    return filters.unsqueeze(1).to(dtype=dtype, device=device)


def _matrix(x: torch.Tensor) -> torch.Tensor:
    """(8, 8) analysis matrix: row k = filter of sub-band k, column = voxel ``4*dz + 2*dy + dx`` of a block."""
    return haar_filters(x.dtype, x.device).reshape(8, 8)


def _check_input(x: torch.Tensor, name: str) -> torch.Tensor:
    """The 5D input as a plain tensor: an image's MONAI metadata (affine, ...) does not apply to its coefficients."""
    if x.ndim != 5:
        raise ValueError(f"{name} expects a 5D tensor (B, C, D, H, W), got shape {tuple(x.shape)}.")
    return x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x


class _NativeDWT(torch.autograd.Function):
    """`dwt3d` through the C kernel; the gradient of an orthonormal transform is its inverse."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return native.dwt3d_native(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return idwt3d(grad)


class _NativeIDWT(torch.autograd.Function):
    """`idwt3d` through the C kernel."""

    @staticmethod
    def forward(ctx, coeffs: torch.Tensor) -> torch.Tensor:
        return native.idwt3d_native(coeffs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return dwt3d(grad)


def dwt3d(x: torch.Tensor, use_native: bool = True) -> torch.Tensor:
    """One-level orthonormal 3D Haar DWT.

    Args:
        x: (B, C, D, H, W) with D, H, W even.
        use_native: use the C kernel for CPU float32/float64 input when it is available.

    Returns:
        (B, 8*C, D/2, H/2, W/2) plain tensor (also for a MONAI ``MetaTensor`` input); channel
        ``8*c + k`` is sub-band ``SUBBANDS[k]`` of input channel c.

    Raises:
        ValueError: if x is not 5D or a spatial size is odd (see `pad_to_multiple`).
    """
    x = _check_input(x, "dwt3d")
    b, c, *spatial = x.shape
    odd = [s for s in spatial if s % 2]
    if odd:
        raise ValueError(
            f"dwt3d needs even spatial sizes, got {tuple(spatial)}; pad first, e.g. with "
            "wdm_bundle.wavelets.pad_to_multiple(x, 2)."
        )
    if use_native and native.supports(x):
        return _NativeDWT.apply(x)
    d, h, w = (n // 2 for n in spatial)
    blocks = x.reshape(b * c, d, 2, h, 2, w, 2).permute(0, 2, 4, 6, 1, 3, 5).reshape(b * c, 8, d * h * w)
    y = torch.matmul(_matrix(x), blocks)
    return y.reshape(b, 8 * c, d, h, w)


def idwt3d(coeffs: torch.Tensor, use_native: bool = True) -> torch.Tensor:
    """Inverse of `dwt3d`: (B, 8*C, d, h, w) -> (B, C, 2d, 2h, 2w); ``use_native`` as in `dwt3d`."""
    coeffs = _check_input(coeffs, "idwt3d")
    b, c8, *spatial = coeffs.shape
    if c8 % 8:
        raise ValueError(f"idwt3d needs a multiple of 8 channels (8 sub-bands per image channel), got {c8}.")
    if use_native and native.supports(coeffs):
        return _NativeIDWT.apply(coeffs)
    d, h, w = spatial
    blocks = torch.matmul(_matrix(coeffs).T, coeffs.reshape(b * c8 // 8, 8, d * h * w))
    y = blocks.reshape(b * c8 // 8, 2, 2, 2, d, h, w).permute(0, 4, 1, 5, 2, 6, 3)
    return y.reshape(b, c8 // 8, 2 * d, 2 * h, 2 * w)


def pad_to_multiple(
    x: torch.Tensor, multiple: int | Sequence[int], mode: str = "constant", value: float = 0.0
) -> tuple[torch.Tensor, tuple[tuple[int, int], ...]]:
    """Pad the spatial dims of (B, C, *spatial) so each is divisible by `multiple`.

    Padding is split as evenly as possible (extra voxel at the end).

    Returns:
        the padded tensor and the ((before, after), ...) widths per spatial dim, to pass to
        `crop_padding` to undo it.
    """
    spatial = x.shape[2:]
    mult = [multiple] * len(spatial) if isinstance(multiple, int) else list(multiple)
    if len(mult) != len(spatial) or any(m < 1 for m in mult):
        raise ValueError(f"multiple must be a positive int or one per spatial dim {tuple(spatial)}, got {multiple}.")
    widths = []
    for s, m in zip(spatial, mult):
        total = (-s) % m
        widths.append((total // 2, total - total // 2))
    flat = [v for before_after in reversed(widths) for v in before_after]  # F.pad wants last dim first
    if not any(flat):
        return x, tuple(widths)
    kwargs = {"value": value} if mode == "constant" else {}
    return F.pad(x, flat, mode=mode, **kwargs), tuple(widths)


def crop_padding(x: torch.Tensor, widths: Sequence[Sequence[int]]) -> torch.Tensor:
    """Undo `pad_to_multiple`: remove ((before, after), ...) voxels from the spatial dims of (B, C, *spatial)."""
    if len(widths) != x.ndim - 2:
        raise ValueError(f"got {len(widths)} pad widths for {x.ndim - 2} spatial dims.")
    index = [slice(None), slice(None)] + [slice(b, s - a) for (b, a), s in zip(widths, x.shape[2:])]
    return x[tuple(index)]
