"""Baselines for missing-contrast synthesis: histogram matching (oracle, training-only) and the mean training image."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = [
    "best_correlated_baseline",
    "histogram_match",
    "mean_target_baseline",
    "pearson",
    "quantile_function",
    "training_histogram_baseline",
]


def _mask_or_all(mask: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    if mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"'{name}' must have shape {tuple(shape)}; got {mask.shape}.")
    if not mask.any():
        raise ValueError(f"'{name}' is empty.")
    return mask


def histogram_match(
    source: np.ndarray,
    reference: np.ndarray,
    source_mask: np.ndarray | None = None,
    reference_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Map ``source`` intensities onto ``reference``'s distribution by quantile mapping.

    The voxel at source quantile q gets the reference value at quantile q (linear
    interpolation between quantiles; ties in ``source`` share one value). If both masks hold the
    same number of voxels and the source values are distinct, the sorted output equals the
    sorted reference exactly.

    Args:
        source: any shape, e.g. (D, H, W).
        reference: any shape (need not match ``source``).
        source_mask: bool of ``source``'s shape; only these voxels are mapped, the rest are 0.
            ``None``: all voxels.
        reference_mask: bool of ``reference``'s shape; the distribution to match. ``None``: all.

    Returns:
        float32 array of ``source``'s shape.

    Raises:
        ValueError: a mask of the wrong shape, or an empty mask.
    """
    source = np.asarray(source, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    src_mask = _mask_or_all(source_mask, source.shape, "source_mask")
    ref_mask = _mask_or_all(reference_mask, reference.shape, "reference_mask")
    src_values, src_inverse, src_counts = np.unique(source[src_mask], return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(reference[ref_mask], return_counts=True)
    src_quantiles = np.cumsum(src_counts) / src_counts.sum()
    ref_quantiles = np.cumsum(ref_counts) / ref_counts.sum()
    mapped = np.interp(src_quantiles, ref_quantiles, ref_values)
    out = np.zeros(source.shape, np.float32)
    out[src_mask] = mapped[src_inverse.reshape(-1)]
    return out


def quantile_function(volume: np.ndarray, mask: np.ndarray | None = None, num_quantiles: int = 1001) -> np.ndarray:
    """Values of ``volume`` (inside ``mask``) at ``num_quantiles`` evenly spaced levels 0..1.

    Averaging these over volumes gives the quantile function of their Wasserstein barycentre: a
    "typical" intensity distribution that needs ``num_quantiles`` numbers, not all voxels.

    Returns:
        float64 (num_quantiles,) non-decreasing array.
    """
    if int(num_quantiles) != num_quantiles or num_quantiles < 2:
        raise ValueError(f"'num_quantiles' must be an int >= 2; got {num_quantiles!r}.")
    volume = np.asarray(volume, np.float64)
    m = _mask_or_all(mask, volume.shape, "mask")
    return np.quantile(volume[m], np.linspace(0.0, 1.0, int(num_quantiles)))


def training_histogram_baseline(
    source: np.ndarray, reference_quantiles: np.ndarray, mask: np.ndarray | None
) -> np.ndarray:
    """Map ``source`` onto a reference distribution given by its quantile function (no ground truth used).

    The deployable counterpart of :func:`best_correlated_baseline`: the source contrast is chosen
    and ``reference_quantiles`` are computed on training cases only (e.g. the mean
    :func:`quantile_function` of the training targets), so it can run where the target is missing.

    Args:
        source: (D, H, W) normalised available contrast.
        reference_quantiles: (Q,) non-decreasing values at levels ``linspace(0, 1, Q)``.
        mask: (D, H, W) bool; voxels outside are 0. ``None``: all voxels.

    Returns:
        float32 array of ``source``'s shape.
    """
    ref = np.asarray(reference_quantiles, np.float64)
    if ref.ndim != 1 or ref.size < 2 or np.any(np.diff(ref) < 0):
        raise ValueError(
            f"'reference_quantiles' must be a non-decreasing 1D array of >= 2 values; got shape {ref.shape}."
        )
    source = np.asarray(source, np.float64)
    m = _mask_or_all(mask, source.shape, "mask")
    values, inverse, counts = np.unique(source[m], return_inverse=True, return_counts=True)
    levels = (np.cumsum(counts) - 0.5 * counts) / counts.sum()  # mid-rank of each distinct value
    out = np.zeros(source.shape, np.float32)
    out[m] = np.interp(levels, np.linspace(0.0, 1.0, ref.size), ref)[inverse.reshape(-1)]
    return out


def pearson(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of ``a`` and ``b`` over ``mask`` (all voxels if ``None``); NaN if one is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"'a' and 'b' must have the same shape; got {a.shape} and {b.shape}.")
    m = _mask_or_all(mask, a.shape, "mask")
    x, y = a[m] - a[m].mean(), b[m] - b[m].mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def best_correlated_baseline(
    available: Mapping[str, np.ndarray], target: np.ndarray, mask: np.ndarray | None
) -> tuple[str, np.ndarray]:
    """The available contrast most correlated with ``target``, histogram-matched to ``target``.

    An ORACLE-strength baseline, not a method: it peeks at the ground truth twice, to pick the
    contrast with the highest (signed) Pearson correlation inside ``mask`` and to match the
    intensity histogram of ``target`` inside ``mask``. A synthesis model should beat it where the
    contrasts carry different information (e.g. T2w/FLAIR from T1), and may not where they are
    near copies (e.g. t1n from t1c).

    Args:
        available: ``{contrast: (D, H, W) array}``, normalised volumes of the available inputs.
        target: (D, H, W) ground truth (normalised).
        mask: (D, H, W) bool, e.g. the brain; ``None`` means all voxels.

    Returns:
        ``(contrast, volume)``: the chosen contrast name and the float32 matched volume (0
        outside ``mask``).

    Raises:
        ValueError: ``available`` is empty or a volume's shape differs from ``target``'s.
    """
    if not available:
        raise ValueError("'available' is empty: no contrast to choose from.")
    target = np.asarray(target)
    for name, vol in available.items():
        if np.shape(vol) != target.shape:
            raise ValueError(f"available['{name}'] has shape {np.shape(vol)}, 'target' has {target.shape}.")
    scores = {name: pearson(vol, target, mask) for name, vol in available.items()}
    best = max(scores, key=lambda k: -np.inf if np.isnan(scores[k]) else scores[k])
    return best, histogram_match(available[best], target, mask, mask)


def mean_target_baseline(volumes: Iterable[np.ndarray]) -> np.ndarray:
    """Voxel-wise mean of (already normalised, same-shape) training target volumes.

    Args:
        volumes: a sequence (or any iterable, consumed once) of (D, H, W) arrays.

    Returns:
        float32 (D, H, W) mean.

    Raises:
        ValueError: no volumes, or a volume whose shape differs from the first one's (both shown).
    """
    total, count = None, 0
    for i, vol in enumerate(volumes):
        vol = np.asarray(vol, np.float64)
        if total is None:
            total = np.zeros(vol.shape, np.float64)
        elif vol.shape != total.shape:
            raise ValueError(f"'volumes'[{i}] has shape {vol.shape}, the first one has {total.shape}.")
        total += vol
        count += 1
    if total is None:
        raise ValueError("'volumes' is empty: no training volume to average.")
    return (total / count).astype(np.float32)
