"""Random healthy-tissue inpainting masks, after the BraTS 2023/2024 "Local Synthesis" challenge's recipe.

The challenge trains on ``-mask-healthy`` regions: tumour-like shapes placed in healthy brain tissue,
so that the tissue to be inpainted is known. :func:`random_healthy_mask` draws such a region for a
(D, H, W) volume: a tumour-like blob (:func:`tumour_like_blob`, a union of a few random ellipsoids
with a slightly rough, smooth boundary) of a random size, placed uniformly among the positions where
it lies entirely inside the brain (``image > 0``) and away from a given lesion
(:func:`placement_region`, :func:`valid_centres`). Pure numpy / scipy; every draw comes from one
seeded ``numpy.random.Generator``, so a seed gives the same mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve

__all__ = ["placement_region", "random_healthy_mask", "tumour_like_blob", "valid_centres"]


def _as_rng(seed: int | Sequence[int] | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _as_spacing(spacing: Sequence[float] | None) -> np.ndarray:
    sp = np.ones(3) if spacing is None else np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(sp > 0):
        raise ValueError(f"'spacing' must be 3 positive numbers; got {spacing!r}.")
    return sp


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def tumour_like_blob(
    num_voxels: int,
    rng: np.random.Generator,
    spacing: Sequence[float] | None = None,
    num_lobes: int = 3,
    roughness: float = 0.15,
) -> np.ndarray:
    """A connected, tumour-like 3D shape of about ``num_voxels`` voxels, centred in its box.

    The shape is the sublevel set of ``min_i rho_i + roughness * noise``: ``rho_i`` the normalised
    radius of ellipsoid ``i`` (a main one of random axes and orientation and up to ``num_lobes - 1``
    smaller lobes centred inside it), ``noise`` a smooth random field (unit std). The level is chosen
    so that exactly ``num_voxels`` voxels are selected; only the connected component (6-connectivity)
    holding the most voxels is kept, so the count can be a little lower.

    Args:
        num_voxels: target voxel count, >= 1.
        rng: the random generator (all draws come from it).
        spacing: voxel size (3,) in any unit, so the shape is round in world space (default 1, 1, 1).
        num_lobes: number of ellipsoids, >= 1.
        roughness: amplitude of the boundary perturbation (0 gives a union of exact ellipsoids).

    Returns:
        bool array of odd shape (2h+1 per axis), the blob's centre voxel at index ``h``, with
        1 <= ``blob.sum()`` <= ``num_voxels``.
    """
    if int(num_voxels) != num_voxels or num_voxels < 1 or int(num_lobes) != num_lobes or num_lobes < 1:
        raise ValueError(f"'num_voxels' and 'num_lobes' must be ints >= 1; got {num_voxels!r}, {num_lobes!r}.")
    sp = _as_spacing(spacing)
    radius = (3.0 * num_voxels * float(np.prod(sp)) / (4.0 * np.pi)) ** (1.0 / 3.0)  # of a ball that size
    half = np.ceil(2.0 * radius / sp).astype(int) + 1
    grids = np.meshgrid(*[(np.arange(-h, h + 1) * s) for h, s in zip(half, sp)], indexing="ij")
    pts = np.stack([g.ravel() for g in grids])  # (3, N) offsets from the centre, in spacing units

    level = np.full(pts.shape[1], np.inf)
    main_axes = None
    for lobe in range(int(num_lobes)):
        axes = rng.uniform(0.7, 1.3, 3)
        axes = axes / np.prod(axes) ** (1.0 / 3.0) * radius * (1.0 if lobe == 0 else rng.uniform(0.4, 0.7))
        rot = _rotation(rng)
        if lobe == 0:
            centre, main_axes, main_rot = np.zeros(3), axes, rot
        else:  # a point at most half-way to the main ellipsoid's surface
            direction = rng.standard_normal(3)
            centre = main_rot.T @ (main_axes * direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.5))
        rho = np.linalg.norm((rot @ (pts - centre[:, None])) / axes[:, None], axis=0)
        level = np.minimum(level, rho)
    if roughness > 0:
        sigma = np.maximum(0.3 * radius / sp, 0.5)
        noise = ndi.gaussian_filter(rng.standard_normal(tuple(2 * half + 1)), sigma, mode="wrap").ravel()
        level = level + roughness * (noise - noise.mean()) / (noise.std() + 1e-12)
    n = min(int(num_voxels), level.size)
    blob = np.zeros(level.size, bool)
    blob[np.argpartition(level, n - 1)[:n]] = True
    labels, count = ndi.label(blob.reshape(tuple(2 * half + 1)))
    if count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        return labels == 1 + int(np.argmax(sizes))
    return labels > 0


def placement_region(
    image: np.ndarray, lesion: np.ndarray | None = None, margin: float = 0.0, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Voxels a healthy mask may cover: inside the brain (``image > 0``), farther than ``margin`` from the lesion.

    Args:
        image: (D, H, W) image (or brain mask); the brain is ``image > 0``.
        lesion: optional (D, H, W) lesion mask (non-zero = lesion); None or all-zero for none.
        margin: voxels within this distance (in ``spacing`` units, voxels by default) of a lesion
            voxel are excluded; 0 excludes only the lesion itself (the mask may then border it).
        spacing: voxel size (3,) for ``margin`` (default 1, 1, 1).

    Returns:
        bool array (D, H, W).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"'image' must be a (D, H, W) array; got shape {image.shape}.")
    if margin < 0:
        raise ValueError(f"'margin' must be >= 0; got {margin!r}.")
    allowed = image > 0
    if lesion is not None:
        lesion = np.asarray(lesion) != 0
        if lesion.shape != image.shape:
            raise ValueError(f"'lesion' shape {lesion.shape} differs from the image's {image.shape}.")
        if lesion.any():
            dist = ndi.distance_transform_edt(~lesion, sampling=_as_spacing(spacing))
            allowed &= dist > margin
    return allowed


def valid_centres(allowed: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """Positions where ``blob`` (odd shape, centred) lies entirely inside ``allowed`` and the array.

    Args:
        allowed: bool (D, H, W).
        blob: bool array of odd shape (2h+1 per axis), its centre voxel at ``h``.

    Returns:
        bool (D, H, W): True at ``c`` iff every blob voxel ``k`` lands on an allowed voxel ``c + k - h``.
    """
    half = np.asarray(blob.shape) // 2
    if np.any(np.asarray(blob.shape) % 2 == 0):
        raise ValueError(f"'blob' must have an odd size along every axis; got shape {blob.shape}.")
    forbidden = np.pad(~np.asarray(allowed, bool), [(h, h) for h in half], constant_values=True)
    # Number of blob voxels on forbidden voxels for each centre (a correlation, by FFT).
    hits = fftconvolve(forbidden.astype(np.float64), blob[::-1, ::-1, ::-1].astype(np.float64), mode="valid")
    return hits < 0.5


def _voxel_range(
    num_brain: int, fraction: float | Sequence[float], num_voxels: int | Sequence[int] | None
) -> tuple[int, int]:
    if num_voxels is not None:
        lo, hi = (num_voxels, num_voxels) if np.isscalar(num_voxels) else tuple(num_voxels)
        lo, hi = int(lo), int(hi)
    else:
        f_lo, f_hi = (fraction, fraction) if np.isscalar(fraction) else tuple(fraction)
        if not 0 < f_lo <= f_hi < 1:
            raise ValueError(f"'fraction' must be a number or a (low, high) pair in (0, 1); got {fraction!r}.")
        lo = max(1, int(np.ceil(f_lo * num_brain)))
        hi = max(lo, int(np.floor(f_hi * num_brain)))  # a narrow range still holds an int
    if not 1 <= lo <= hi:
        raise ValueError(f"The mask size range must satisfy 1 <= low <= high; got ({lo}, {hi}).")
    return lo, hi


def random_healthy_mask(
    image: np.ndarray,
    lesion: np.ndarray | None = None,
    seed: int | Sequence[int] | np.random.Generator | None = 0,
    fraction: float | Sequence[float] = (0.01, 0.04),
    num_voxels: int | Sequence[int] | None = None,
    margin: float = 0.0,
    spacing: Sequence[float] | None = None,
    num_lobes: int = 3,
    max_tries: int = 20,
) -> np.ndarray:
    """A random tumour-like mask inside the brain and away from the lesion (the challenge's healthy mask).

    Each try draws a size uniformly in the voxel range, a :func:`tumour_like_blob` of that size,
    then a centre uniformly among the positions where the whole blob lies in the
    :func:`placement_region`; tries with no such position (or a blob below the range) are redrawn.

    Args:
        image: (D, H, W) image; the brain is ``image > 0`` (a brain mask works as well).
        lesion: optional (D, H, W) lesion mask (non-zero = lesion) the mask must not overlap.
        seed: int, sequence of ints or ``numpy.random.Generator``; the same seed gives the same mask.
        fraction: mask size as a fraction of the brain's voxels, a number or a (low, high) range.
        num_voxels: mask size in voxels, an int or (low, high); overrides ``fraction``.
        margin: minimum distance from the lesion (``spacing`` units; 0: disjoint, may border it).
        spacing: voxel size (3,), for round shapes in world space and for ``margin`` (default 1, 1, 1).
        num_lobes: ellipsoids per blob, >= 1.
        max_tries: number of draws before giving up, >= 1.

    Returns:
        uint8 array (D, H, W) of 0/1 whose voxel count lies in the size range; every 1 is a brain
        voxel farther than ``margin`` from the lesion.

    Raises:
        ValueError: bad arguments, no brain voxel, or no placement found in ``max_tries`` draws
            (the message gives the brain and allowed voxel counts and the size range).
    """
    rng = _as_rng(seed)
    allowed = placement_region(image, lesion, margin, spacing)
    num_brain = int(np.count_nonzero(np.asarray(image) > 0))
    if num_brain == 0:
        raise ValueError("The image has no brain voxel (image > 0): a healthy mask cannot be placed.")
    lo, hi = _voxel_range(num_brain, fraction, num_voxels)
    if int(max_tries) != max_tries or max_tries < 1:
        raise ValueError(f"'max_tries' must be an int >= 1; got {max_tries!r}.")
    num_allowed = int(allowed.sum())
    for _ in range(int(max_tries) if lo <= num_allowed else 0):
        blob = tumour_like_blob(int(rng.integers(lo, hi + 1)), rng, spacing, num_lobes)
        centres = np.argwhere(valid_centres(allowed, blob))
        if blob.sum() < lo or len(centres) == 0:
            continue
        corner = centres[rng.integers(len(centres))] - np.asarray(blob.shape) // 2
        # Place the blob (cropped to the array: the cropped part lies outside it only where it is empty).
        mask = np.zeros(allowed.shape, np.uint8)
        src, dst = [], []
        for c, b, n in zip(corner, blob.shape, allowed.shape):
            start, stop = max(c, 0), min(c + b, n)
            dst.append(slice(start, stop))
            src.append(slice(start - c, stop - c))
        mask[tuple(dst)] = blob[tuple(src)]
        if int(mask.sum()) == int(blob.sum()) and not np.any(mask.astype(bool) & ~allowed):
            return mask
    raise ValueError(
        f"No healthy mask of {lo}-{hi} voxels fits inside the brain ({num_brain} voxels, {num_allowed} allowed "
        f"after excluding the lesion with margin {margin}) in {max_tries} tries; lower 'fraction'/'num_voxels' "
        "or 'margin'."
    )
