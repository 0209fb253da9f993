"""Tests of wdm_bundle.metrics.inpainting_baselines against float64 formulas."""

from __future__ import annotations

import numpy as np
import pytest

from wdm_bundle.metrics.inpainting_baselines import INPAINTING_BASELINES, harmonic_fill, mean_fill

SHAPE = (12, 14, 16)


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")


def _box_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[3:9, 2:11, 4:13] = True
    return mask


def _laplacian(u: np.ndarray) -> np.ndarray:
    """The 6-neighbour discrete Laplacian of ``u`` on its interior voxels (float64)."""
    c = u[1:-1, 1:-1, 1:-1]
    return (
        (u[2:, 1:-1, 1:-1] + u[:-2, 1:-1, 1:-1] + u[1:-1, 2:, 1:-1] + u[1:-1, :-2, 1:-1] + u[1:-1, 1:-1, 2:])
        + u[1:-1, 1:-1, :-2]
        - 6 * c
    )


@pytest.mark.parametrize(
    "formula",
    [
        lambda z, y, x: 2.0 * z - 3.0 * y + 0.5 * x + 7.0,
        lambda z, y, x: x**2 - y**2,
        lambda z, y, x: z * y - 2 * x * z + z**2 - x**2 / 2 - y**2 / 2,
    ],
    ids=["linear", "x2-y2", "mixed-harmonic"],
)
def test_harmonic_reproduces_harmonic_functions(formula):
    truth = formula(*_grid())
    mask = _box_mask()
    voided = np.where(mask, -1234.0, truth)  # the masked values must never be read
    filled = harmonic_fill(voided, mask)
    assert filled.dtype == np.float64
    np.testing.assert_allclose(filled[mask], truth[mask], rtol=0, atol=1e-8)
    assert np.array_equal(filled[~mask], voided[~mask])


def test_harmonic_solves_laplace_and_keeps_outside():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[2:10, 3:12, 2:8] = True
    mask[5:9, 5:8, 8:14] = True  # non-convex
    filled = harmonic_fill(image, mask)
    assert filled.dtype == np.float32
    assert filled.tobytes() != image.tobytes()
    assert np.array_equal(filled[~mask].view(np.uint32), image[~mask].view(np.uint32))  # bit-identical
    lap = _laplacian(filled.astype(np.float64))
    inner = mask[1:-1, 1:-1, 1:-1]
    assert np.abs(lap[inner]).max() < 1e-3 * np.abs(image).max()  # float32 output rounding only
    # between the known extremes (maximum principle)
    assert image[~mask].min() <= filled[mask].min() and filled[mask].max() <= image[~mask].max()


def test_harmonic_volume_edge_and_empty_mask():
    truth = 3.0 * _grid()[0] + 1.0  # linear along axis 0, constant in the others
    mask = np.zeros(SHAPE, bool)
    mask[4:8, :, :5] = True  # touches three faces of the volume (zero-flux there)
    filled = harmonic_fill(truth, mask)
    np.testing.assert_allclose(filled, truth, rtol=0, atol=1e-8)
    same = harmonic_fill(truth, np.zeros(SHAPE, bool))
    assert same is not truth and np.array_equal(same, truth)
    with pytest.raises(ValueError, match="whole volume"):
        harmonic_fill(truth, np.ones(SHAPE, bool))


def test_harmonic_large_mask_is_fast():
    import time

    z, y, x = np.meshgrid(*(np.arange(64.0),) * 3, indexing="ij")
    image = (np.sin(x / 5) + np.cos(y / 4) + z / 50).astype(np.float32)
    mask = (z - 32) ** 2 + (y - 32) ** 2 + (x - 32) ** 2 <= 20**2  # ~33k voxels
    start = time.perf_counter()
    filled = harmonic_fill(image, mask)
    assert time.perf_counter() - start < 10
    lap = _laplacian(filled.astype(np.float64))
    assert np.abs(lap[mask[1:-1, 1:-1, 1:-1]]).max() < 1e-4


def test_mean_fill_equals_numpy_mean():
    rng = np.random.default_rng(1)
    image = rng.uniform(1, 5, SHAPE).astype(np.float32)
    image[:, :, :3] = 0  # background
    mask = _box_mask()
    filled = mean_fill(image, mask)
    brain = (image > 0) & ~mask
    assert np.all(filled[mask] == np.float32(np.mean(image[brain], dtype=np.float64)))
    assert np.array_equal(filled[~mask], image[~mask]) and filled.dtype == np.float32
    custom = np.zeros(SHAPE, bool)
    custom[0] = True
    assert np.all(mean_fill(image, mask, brain=custom)[mask] == np.float32(image[0].astype(np.float64).mean()))
    as_int = mean_fill(np.where(image > 0, 2, 0).astype(np.int16), mask.astype(np.uint8))
    assert as_int.dtype == np.float64 and np.all(as_int[mask] == 2.0)


def test_bad_inputs():
    image, mask = np.ones(SHAPE), _box_mask()
    for fill in INPAINTING_BASELINES.values():
        with pytest.raises(ValueError, match="shape"):
            fill(image, mask[:-1])
        with pytest.raises(ValueError, match="binary"):
            fill(image, mask * 2)
        with pytest.raises(ValueError, match=r"\(D, H, W\)"):
            fill(image[0], mask[0])
    with pytest.raises(ValueError, match="no known brain"):
        mean_fill(np.zeros(SHAPE), mask)
