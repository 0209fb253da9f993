"""MS-SSIM diversity of a set of 3D volumes: mean MS-SSIM over pairs (lower = more diverse).

Uses MONAI's ``MultiScaleSSIMMetric`` (3D, data range 1, Gaussian kernel 7 as in the WDM paper,
sigma 1.5). MONAI requires every dimension ``size // (S - 1)^2 > kernel_size - 1`` for ``S``
scales: with the default 5 weights and kernel 7 a volume must be >= 112 voxels along each axis
(fine for 128^3 and 256^3 BraTS volumes). Smaller volumes need fewer scales, e.g. 3 weights for
32^3 (>= 28 voxels); see :func:`ms_ssim_min_size` and :func:`truncated_ms_ssim_weights`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric

from wdm_bundle.data.io import load_volume

__all__ = [
    "MS_SSIM_WEIGHTS",
    "ms_ssim",
    "ms_ssim_diversity",
    "ms_ssim_min_size",
    "rescale_to_unit",
    "sample_pairs",
    "truncated_ms_ssim_weights",
]

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, MONAI default


def ms_ssim_min_size(num_scales: int = 5, kernel_size: int = 7) -> int:
    """Smallest size per axis MONAI's MS-SSIM accepts: ``size // max(1, S - 1)^2 > kernel_size - 1``."""
    div = max(1, num_scales - 1) ** 2
    return (kernel_size - 1) * div + div


def truncated_ms_ssim_weights(num_scales: int) -> tuple[float, ...]:
    """The first ``num_scales`` standard MS-SSIM weights, renormalised to sum 1 (for small volumes)."""
    if not 1 <= num_scales <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"'num_scales' must be in [1, {len(MS_SSIM_WEIGHTS)}]; got {num_scales!r}.")
    w = np.asarray(MS_SSIM_WEIGHTS[:num_scales])
    return tuple(float(x) for x in w / w.sum())


def rescale_to_unit(volume: np.ndarray | torch.Tensor, data_range: Sequence[float]) -> torch.Tensor:
    """Map ``data_range`` = (lo, hi) linearly to [0, 1] and clip; returns a float32 tensor."""
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"'data_range' must be (lo, hi) with hi > lo; got {tuple(data_range)!r}.")
    v = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume).float()
    return ((v - lo) / (hi - lo)).clamp_(0.0, 1.0)


def ms_ssim(
    x: torch.Tensor, y: torch.Tensor, *, kernel_size: int = 7, weights: Sequence[float] = MS_SSIM_WEIGHTS
) -> float:
    """MS-SSIM of two (D, H, W) volumes in [0, 1] (MONAI ``MultiScaleSSIMMetric``, data range 1).

    Raises:
        ValueError: shapes differ, or a dimension is below :func:`ms_ssim_min_size`.
    """
    if x.shape != y.shape:
        raise ValueError(f"volumes must have the same shape; got {tuple(x.shape)} and {tuple(y.shape)}.")
    need = ms_ssim_min_size(len(weights), kernel_size)
    if x.ndim != 3 or min(x.shape) < need:
        raise ValueError(
            f"MS-SSIM with {len(weights)} scales and kernel {kernel_size} needs 3D volumes of >= {need} voxels per "
            f"axis; got {tuple(x.shape)}. Pass fewer scales, e.g. weights=truncated_ms_ssim_weights(3) for 32^3."
        )
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=kernel_size, weights=tuple(weights))
    return float(metric(x[None, None].float(), y[None, None].float()).mean().item())


def sample_pairs(n: int, max_pairs: int | None = None, seed: int = 0) -> list[tuple[int, int]]:
    """All ``i < j`` pairs of ``n`` items, or a seeded random subset of ``max_pairs`` of them (sorted)."""
    if n < 2:
        raise ValueError(f"MS-SSIM diversity needs at least 2 volumes; got {n}.")
    total = n * (n - 1) // 2
    if max_pairs is None or max_pairs >= total:
        return list(itertools.combinations(range(n), 2))
    if max_pairs < 1:
        raise ValueError(f"'max_pairs' must be >= 1 or None; got {max_pairs!r}.")
    rng = np.random.default_rng(seed)
    picks = set(np.sort(rng.choice(total, size=int(max_pairs), replace=False)).tolist())
    return [p for k, p in enumerate(itertools.combinations(range(n), 2)) if k in picks]


def ms_ssim_diversity(
    volumes: Sequence[str | os.PathLike | np.ndarray | torch.Tensor],
    data_range: Sequence[float] = (-1.0, 1.0),
    *,
    max_pairs: int | None = None,
    seed: int = 0,
    kernel_size: int = 7,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    loader: Callable[[str | os.PathLike], np.ndarray] = load_volume,
    progress: bool = False,
) -> dict:
    """Mean MS-SSIM over pairs of ``volumes`` (all pairs, or ``max_pairs`` seeded random ones).

    Volumes given as paths are loaded one pair at a time (at most two in memory), each rescaled from
    ``data_range`` to [0, 1]. Lower = more diverse; compare with the real set's value.

    Returns:
        ``{"value", "std", "num_pairs", "num_volumes"}``.
    """
    pairs = sample_pairs(len(volumes), max_pairs, seed)

    def get(i: int) -> torch.Tensor:
        v = volumes[i]
        return rescale_to_unit(loader(v) if isinstance(v, (str, os.PathLike)) else v, data_range)

    it = pairs
    if progress:
        from monai.utils import optional_import

        tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
        it = tqdm(pairs, desc="MS-SSIM pairs") if has_tqdm else pairs
    values = np.array([ms_ssim(get(i), get(j), kernel_size=kernel_size, weights=weights) for i, j in it])
    return {
        "value": float(values.mean()),
        "std": float(values.std()),
        "num_pairs": len(pairs),
        "num_volumes": len(volumes),
    }
