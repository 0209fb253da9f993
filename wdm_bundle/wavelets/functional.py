"""Orthonormal 3D Haar wavelet transform (one level) as an 8x8 matrix on each 2x2x2 block.

MONAI has no wavelet transform, so this is our own. Each of the 8 sub-band filters is a
2x2x2 kernel with entries +-1/(2*sqrt(2)); together they form an orthonormal 8x8 matrix acting
on the 8 voxels of each non-overlapping 2x2x2 block. The DWT gathers the blocks (one strided
copy) and multiplies by that matrix; the IDWT multiplies by its transpose and scatters back.
It runs on any device and dtype, is differentiable and compiles with TorchScript.

The matrix is the Kronecker product of three 2x2 Haar steps, one per axis. CPU float32/float64
tensors that autograd does not record (sampling, preparing batches) take that factored form:
the gather (DWT) or scatter (IDWT) writes the scaled voxels into the output, and three in-place
add/subtract steps on its halves finish the transform. The output is then the only fresh memory
(first-touching fresh memory costs about as much as a copy on CPU), and the steps run at memory
speed. Both forms give the same numbers up to rounding; ``scripts/benchmark.py`` times them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import List

import torch
import torch.nn.functional as F

__all__ = ["haar_filters", "dwt3d", "idwt3d", "dwt3d_levels", "idwt3d_levels", "pad_to_multiple", "crop_padding"]


def haar_filters(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Return the 8 analysis filters, shape (8, 1, 2, 2, 2), in `SUBBANDS` order.

    Band index ``4*d + 2*h + w`` where each bit is 0 for low-pass (L) and 1 for high-pass (H),
    the first letter being the depth axis. Low-pass is ``(a + b)/sqrt2`` and high-pass
    ``(a - b)/sqrt2`` of each pair of neighbours, as in PyWavelets' ``haar``.
    """
    return _filters(dtype, torch.device(device) if device is not None else None).unsqueeze(1)


def _filters(dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    """(8, 2, 2, 2) analysis filters: `haar_filters` in a form TorchScript compiles."""
    # rows: low, high pass; made on the CPU in float64 (not on a default device set by the caller), then cast
    pair = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64, device=torch.device("cpu")) / math.sqrt(2.0)
    return torch.einsum("ai,bj,ck->abcijk", pair, pair, pair).reshape(8, 2, 2, 2).to(dtype=dtype, device=device)


def _matrix(x: torch.Tensor) -> torch.Tensor:
    """(8, 8) analysis matrix: row k = filter of sub-band k, column = voxel ``4*dz + 2*dy + dx`` of a block."""
    return _filters(x.dtype, x.device).reshape(8, 8)


def _shape_text(shape: List[int]) -> str:
    """``(2, 3)`` as Python prints a shape tuple, also under TorchScript."""
    return "(" + ", ".join([str(s) for s in shape]) + ("," if len(shape) == 1 else "") + ")"


def _check_input(x: torch.Tensor, name: str) -> torch.Tensor:
    """The 5D input as a plain tensor: an image's MONAI metadata (affine, ...) does not apply to its coefficients."""
    if x.ndim != 5:
        raise ValueError(name + " expects a 5D tensor (B, C, D, H, W), got shape " + _shape_text(x.shape) + ".")
    if not torch.jit.is_scripting():
        if type(x) is not torch.Tensor:
            x = x.as_subclass(torch.Tensor)
    return x


def _factored(x: torch.Tensor) -> bool:
    """Whether `x` takes the factored form: a CPU float32/float64 tensor that autograd does not record."""
    if x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
        return False
    return x.dtype == torch.float32 or x.dtype == torch.float64


def _haar_steps_(blocks: torch.Tensor, dims: List[int]) -> None:
    """In place, along each of ``dims`` (size 2): ``(a, b) -> (a + b, a - b)``, the unscaled 2x2 Haar step."""
    for dim in dims:
        a, b = blocks.select(dim, 0), blocks.select(dim, 1)
        a.add_(b)
        torch.add(a, b, alpha=-2.0, out=b)  # (a + b) - 2b


def dwt3d(x: torch.Tensor) -> torch.Tensor:
    """One-level orthonormal 3D Haar DWT.

    Args:
        x: (B, C, D, H, W) with D, H, W even.

    Returns:
        (B, 8*C, D/2, H/2, W/2) plain tensor (also for a MONAI ``MetaTensor`` input); channel
        ``8*c + k`` is sub-band ``SUBBANDS[k]`` of input channel c.

    Raises:
        ValueError: if x is not 5D or a spatial size is odd (see `pad_to_multiple`).
    """
    x = _check_input(x, "dwt3d")
    b, c, depth, height, width = x.shape
    if depth % 2 or height % 2 or width % 2:
        raise ValueError(
            "dwt3d needs even spatial sizes, got " + _shape_text([depth, height, width]) + "; pad first, e.g. with "
            "wdm_bundle.wavelets.pad_to_multiple(x, 2)."
        )
    d, h, w = depth // 2, height // 2, width // 2
    blocks = x.reshape(b * c, d, 2, h, 2, w, 2).permute(0, 2, 4, 6, 1, 3, 5)  # (N, dz, dy, dx, d, h, w)
    if not _factored(x):
        return torch.matmul(_matrix(x), blocks.reshape(b * c, 8, d * h * w)).reshape(b, 8 * c, d, h, w)
    y = x.new_empty([b, 8 * c, d, h, w])
    bands = y.view(b * c, 2, 2, 2, d, h, w)
    torch.mul(blocks, 0.125**0.5, out=bands)  # each of the three steps scales by 1/sqrt(2)
    _haar_steps_(bands, [1, 2, 3])
    return y


def idwt3d(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of `dwt3d`: (B, 8*C, d, h, w) -> (B, C, 2d, 2h, 2w)."""
    coeffs = _check_input(coeffs, "idwt3d")
    b, c8, d, h, w = coeffs.shape
    if c8 % 8:
        raise ValueError("idwt3d needs a multiple of 8 channels (8 sub-bands per image channel), got " + str(c8) + ".")
    n = c8 // 8 * b
    if not _factored(coeffs):
        blocks = torch.matmul(_matrix(coeffs).T, coeffs.reshape(n, 8, d * h * w))
        return blocks.reshape(n, 2, 2, 2, d, h, w).permute(0, 4, 1, 5, 2, 6, 3).reshape(b, c8 // 8, 2 * d, 2 * h, 2 * w)
    x = coeffs.new_empty([b, c8 // 8, 2 * d, 2 * h, 2 * w])
    voxels = x.view(n, d, 2, h, 2, w, 2)  # the matrix is symmetric: the same steps, along dz, dy, dx
    torch.mul(coeffs.reshape(n, 2, 2, 2, d, h, w).permute(0, 4, 1, 5, 2, 6, 3), 0.125**0.5, out=voxels)
    _haar_steps_(voxels, [2, 4, 6])
    return x


def dwt3d_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """``levels``-level 3D Haar wavelet-packet transform: `dwt3d` applied ``levels`` times (all bands split again).

    Args:
        x: (B, C, D, H, W) with D, H, W divisible by ``2**levels``.
        levels: number of levels, >= 1.

    Raises:
        ValueError: if x is not 5D or a spatial size is not divisible by ``2**levels``.

    Returns:
        (B, 8**levels * C, D/2**levels, ...); channel ``8**levels * c + 8**(levels-1) * k1 + ... + k_levels`` is
        band ``k1`` of the first level, then ``k2`` of the second, ... of input channel c (each image channel's
        ``8**levels`` bands are contiguous). Orthonormal like `dwt3d`.
    """
    if levels < 1:
        raise ValueError("dwt3d_levels needs levels >= 1, got " + str(levels) + ".")
    x = _check_input(x, "dwt3d_levels")
    multiple = 1
    for _ in range(levels):
        multiple *= 2  # an int also under TorchScript, where 2**levels is a float
    spatial = [int(s) for s in x.shape[2:]]
    if spatial[0] % multiple or spatial[1] % multiple or spatial[2] % multiple:
        raise ValueError(
            "dwt3d_levels with "
            + str(levels)
            + " levels needs spatial sizes divisible by "
            + str(multiple)
            + ", got "
            + _shape_text(spatial)
            + "; pad first, e.g. with wdm_bundle.wavelets.pad_to_multiple(x, "
            + str(multiple)
            + ")."
        )
    for _ in range(levels):
        x = dwt3d(x)
    return x


def idwt3d_levels(coeffs: torch.Tensor, levels: int) -> torch.Tensor:
    """Inverse of `dwt3d_levels`: (B, 8**levels * C, d, h, w) -> (B, C, 2**levels * d, ...)."""
    if levels < 1:
        raise ValueError("idwt3d_levels needs levels >= 1, got " + str(levels) + ".")
    for _ in range(levels):
        coeffs = idwt3d(coeffs)
    return coeffs


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
