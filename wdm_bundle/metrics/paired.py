"""Paired image metrics for contrast synthesis (BraSyn-style): MSE, PSNR and SSIM, whole volume and in a mask."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import MSEMetric, PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs

__all__ = ["METRIC_KEYS", "normalize_percentiles", "paired_metrics"]

METRIC_KEYS: tuple[str, ...] = ("mse", "psnr", "ssim", "mse_mask", "psnr_mask", "ssim_mask")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def normalize_percentiles(
    volume: np.ndarray | torch.Tensor, lower: float = 0.1, upper: float = 99.9, mask: np.ndarray | None = None
) -> np.ndarray:
    """Clip ``volume`` to its ``lower``/``upper`` percentiles and scale to [0, 1] (BraSyn-style).

    Args:
        volume: any shape, e.g. (D, H, W).
        lower, upper: percentiles in [0, 100], ``lower < upper``.
        mask: bool array of ``volume``'s shape; the percentiles are taken over these voxels only
            (e.g. the brain), but every voxel is clipped and scaled.

    Returns:
        float32 array of ``volume``'s shape in [0, 1]; all zeros if the two percentiles are equal.

    Raises:
        ValueError: bad percentiles, a mask of another shape, or an empty mask.
    """
    vol = _as_numpy(volume).astype(np.float32, copy=False)
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"'lower' and 'upper' must satisfy 0 <= lower < upper <= 100; got {lower!r}, {upper!r}.")
    values = vol
    if mask is not None:
        mask = _as_numpy(mask).astype(bool)
        if mask.shape != vol.shape:
            raise ValueError(f"'mask' must have the volume's shape {vol.shape}; got {mask.shape}.")
        if not mask.any():
            raise ValueError("'mask' is empty: no voxel to take the percentiles from.")
        values = vol[mask]
    lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
    if hi <= lo:
        return np.zeros(vol.shape, np.float32)
    return ((np.clip(vol, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _to_batch(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x))[None, None]  # (1, 1, D, H, W)


def _checked(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None,
    data_range: float,
    win_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pred``, ``target`` as float64 and ``mask`` as bool (all True for None) numpy arrays; ValueError if bad."""
    p = _as_numpy(pred).astype(np.float64)
    t = _as_numpy(target).astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"'pred' and 'target' must have the same shape; got {p.shape} and {t.shape}.")
    if p.ndim != 3:
        raise ValueError(f"'pred' and 'target' must be 3D (D, H, W); got shape {p.shape}.")
    if not data_range > 0:
        raise ValueError(f"'data_range' must be > 0; got {data_range!r}.")
    if int(win_size) != win_size or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"'win_size' must be an odd int >= 1; got {win_size!r}.")
    if min(p.shape) < win_size:
        raise ValueError(
            f"every dimension of the volumes {p.shape} must be >= the SSIM window 'win_size' ({win_size})."
        )
    if mask is None:
        m = np.ones(p.shape, bool)
    else:
        m = _as_numpy(mask).astype(bool)
        if m.shape != p.shape:
            raise ValueError(f"'mask' must have the volumes' shape {p.shape}; got {m.shape}.")
        if not m.any():
            raise ValueError("'mask' is empty: no voxel to compute the masked metrics on.")
    return p, t, m


def _ssim_map(yp: torch.Tensor, yt: torch.Tensor, data_range: float, win_size: int) -> np.ndarray:
    """MONAI's 3D SSIM map of two (1, 1, D, H, W) batches with ``SSIMMetric``'s settings ("valid" convolution).

    ``SSIMMetric``'s value is the mean of this map, so the map is computed once and averaged over the
    whole map and over the mask (one 3D SSIM pass instead of two).
    """
    cfg = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=win_size)
    kw = dict(kernel_size=cfg.kernel_size, kernel_sigma=cfg.kernel_sigma, kernel_type=cfg.kernel_type)
    ssim_map, _ = compute_ssim_and_cs(yp, yt, spatial_dims=3, data_range=data_range, k1=cfg.k1, k2=cfg.k2, **kw)
    return ssim_map[0, 0].double().numpy()


def paired_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    data_range: float = 1.0,
    *,
    win_size: int = 11,
) -> dict[str, float]:
    """MSE, PSNR (dB) and SSIM of ``pred`` against ``target``, on the whole volume and inside ``mask``.

    Whole-volume values come from MONAI's ``MSEMetric``, ``PSNRMetric(max_val=data_range)`` and
    ``SSIMMetric(spatial_dims=3, data_range)`` with its defaults: Gaussian window ``win_size`` = 11,
    sigma 1.5, k1 = 0.01, k2 = 0.03. MONAI convolves without padding, so its SSIM map
    (``monai.metrics.regression.compute_ssim_and_cs``, computed once here) covers only the
    ``(D - win_size + 1, H - ..., W - ...)`` centre: ``ssim`` is the mean of that map (exactly
    ``SSIMMetric``'s value) and ``ssim_mask`` its mean over the mask voxels of that centre (NaN if
    the mask lies entirely within ``win_size // 2`` voxels of the border). ``mse_mask`` and
    ``psnr_mask`` use the mask voxels only, ``psnr = 10 log10(data_range^2 / mse)``. PSNR is
    ``inf`` when the MSE is 0 (no cap). Inputs are compared as given: normalise them first
    (:func:`normalize_percentiles`).

    Args:
        pred, target: (D, H, W) volumes, numpy or torch, values in ``[0, data_range]``.
        mask: (D, H, W) bool, e.g. the brain (non-zero voxels of the inputs); ``None`` means the
            whole volume (the ``*_mask`` values then equal the whole-volume ones).
        data_range: intensity range, > 0.
        win_size: SSIM window; every dimension must be >= ``win_size``.

    Returns:
        ``{"mse", "psnr", "ssim", "mse_mask", "psnr_mask", "ssim_mask"}`` as floats.

    Raises:
        ValueError: shapes differ (both shown), not 3D, a dimension smaller than ``win_size``,
            ``data_range`` <= 0, or an empty mask.
    """
    p, t, m = _checked(pred, target, mask, data_range, win_size)
    yp, yt = _to_batch(p), _to_batch(t)
    mse = float(MSEMetric()(yp, yt).item())
    psnr = float(PSNRMetric(max_val=data_range)(yp, yt).item())
    ssim_map = _ssim_map(yp, yt, data_range, win_size)
    ssim = float(ssim_map.mean())
    r = win_size // 2
    inner = m[tuple(slice(r, n - r) for n in m.shape)]
    ssim_mask = float(ssim_map[inner].mean()) if inner.any() else math.nan

    mse_mask = float(np.mean((p[m] - t[m]) ** 2))
    psnr_mask = 10.0 * math.log10(data_range**2 / mse_mask) if mse_mask > 0 else math.inf
    return {
        "mse": mse,
        "psnr": psnr,
        "ssim": ssim,
        "mse_mask": mse_mask,
        "psnr_mask": psnr_mask,
        "ssim_mask": ssim_mask,
    }
