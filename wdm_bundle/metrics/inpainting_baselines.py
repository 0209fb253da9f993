"""Inpainting baselines: fill a masked region of a 3D volume from the voxels around it, without a model.

* :func:`mean_fill`: every masked voxel gets the mean intensity of the known brain;
* :func:`harmonic_fill`: the smoothest fill from the mask's border: the solution of the discrete
  (6-neighbour) Laplace equation inside the mask, with the known voxels around it as Dirichlet values.

Both take a (D, H, W) volume and a boolean mask of the same shape and return a new full volume whose
voxels outside the mask are the input's, bit for bit (a floating input keeps its dtype; any other
becomes float64). They are the reference points of issue 18 ("the model beats a mean fill and a
harmonic fill inside the mask") and of :func:`wdm_bundle.reports.inpainting.evaluate_inpainting`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import cg

__all__ = ["INPAINTING_BASELINES", "harmonic_fill", "mean_fill"]


def _check(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask as bool); ValueError for a non-3D image, a mask of another shape or a non-binary mask."""
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {image.shape}.")
    if mask.shape != image.shape:
        raise ValueError(f"the mask has shape {mask.shape}, the image {image.shape}.")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("the mask is not binary: its values must be 0/1 or False/True.")
        mask = mask.astype(bool)
    return image, mask


def _output(image: np.ndarray) -> np.ndarray:
    """A copy of ``image`` to fill: its own dtype if floating, else float64."""
    return image.copy() if np.issubdtype(image.dtype, np.floating) else image.astype(np.float64)


def mean_fill(image: np.ndarray, mask: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """``image`` with every voxel of ``mask`` set to the mean intensity of the known brain.

    Args:
        image: (D, H, W) volume (e.g. a voided T1: the masked region's values are never read).
        mask: boolean (or 0/1) mask of the region to fill, same shape.
        brain: the voxels to average; default: the known brain, ``(image > 0) & ~mask`` (a
            skull-stripped volume has background 0). Masked voxels are always left out.

    Raises:
        ValueError: bad shapes, a non-binary mask, or no known brain voxel to average.
    """
    image, mask = _check(image, mask)
    known = (image > 0) if brain is None else np.asarray(brain, bool)
    known = known & ~mask
    if not known.any():
        raise ValueError("no known brain voxel (image > 0 outside the mask) to take the mean of.")
    out = _output(image)
    out[mask] = np.mean(image[known], dtype=np.float64)
    return out


def _laplace_system(image: np.ndarray, mask: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """(A, b) of the 6-neighbour Laplace equation on the masked voxels (in C order) with Dirichlet values.

    Row i: ``deg_i u_i - sum(masked neighbours u_j) = sum(known neighbours' values)``, ``deg_i`` = the
    number of neighbours inside the volume (a natural, zero-flux boundary at the volume's faces).
    """
    coords = np.nonzero(mask)
    n = coords[0].size
    index = np.full(mask.shape, -1, np.int64)
    index[coords] = np.arange(n)
    values = image.astype(np.float64, copy=False)
    degree, b = np.zeros(n), np.zeros(n)
    rows, cols = [], []
    for axis in range(3):
        for step in (-1, 1):
            nb = list(coords)
            nb[axis] = coords[axis] + step
            inside = (nb[axis] >= 0) & (nb[axis] < mask.shape[axis])
            src = np.nonzero(inside)[0]
            nb = tuple(c[inside] for c in nb)
            degree[src] += 1
            j = index[nb]
            unknown = j >= 0
            rows.append(src[unknown])
            cols.append(j[unknown])
            np.add.at(b, src[~unknown], values[nb][~unknown])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    off = sp.csr_matrix((-np.ones(rows.size), (rows, cols)), shape=(n, n))
    return (sp.diags(degree) + off).tocsr(), b


def harmonic_fill(image: np.ndarray, mask: np.ndarray, rtol: float = 1e-12, maxiter: int = 20_000) -> np.ndarray:
    """``image`` with ``mask`` filled by the harmonic (Laplace) interpolation of the known voxels around it.

    Solves the discrete Laplace equation (6-neighbour stencil, float64) on the masked voxels: each one
    is the mean of its neighbours; known neighbours (outside the mask, any value, background
    included) are fixed Dirichlet values; at the volume's faces the missing neighbours are left out
    (zero flux). Any harmonic function (linear, ``x² - y²``, ...) known around a masked box is
    reproduced inside it. Solved by Jacobi-preconditioned conjugate gradients (the matrix is
    symmetric positive definite) started from the mean of the known voxels: ~100k masked voxels take
    well under a second.

    Args:
        image: (D, H, W) volume; the masked region's values are never read.
        mask: boolean (or 0/1) mask of the region to fill, same shape.
        rtol: relative residual tolerance of conjugate gradients.
        maxiter: their iteration limit.

    Raises:
        ValueError: bad shapes, a non-binary mask, or a mask that covers the whole volume (nothing known).
        RuntimeError: conjugate gradients did not converge.
    """
    image, mask = _check(image, mask)
    out = _output(image)
    if not mask.any():
        return out
    if mask.all():
        raise ValueError("the mask covers the whole volume: no known voxel to interpolate from.")
    a, b = _laplace_system(image, mask)
    x0 = np.full(b.size, np.mean(image[~mask], dtype=np.float64))
    solution, info = cg(a, b, x0=x0, rtol=rtol, atol=0.0, maxiter=maxiter, M=sp.diags(1.0 / a.diagonal()))
    if info != 0:
        raise RuntimeError(f"harmonic_fill: conjugate gradients did not converge in {maxiter} iterations.")
    out[mask] = solution
    return out


# name -> function(image, mask), the baselines the inpainting report scores
INPAINTING_BASELINES = {"mean_fill": mean_fill, "harmonic_fill": harmonic_fill}
