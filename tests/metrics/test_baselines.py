"""Tests of wdm_bundle.metrics.baselines: histogram matching, best-correlated and mean-image baselines."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from wdm_bundle.metrics.baselines import (
    best_correlated_baseline,
    histogram_match,
    mean_target_baseline,
    pearson,
    quantile_function,
    training_histogram_baseline,
)


def _smooth(shape=(16, 16, 16), seed=0):
    x = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return (x - x.min()) / (x.max() - x.min())


def test_histogram_match_takes_reference_values():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(10, 10, 10))
    reference = rng.gamma(2.0, size=(10, 10, 10))
    out = histogram_match(source, reference)
    assert out.dtype == np.float32 and out.shape == source.shape
    assert np.allclose(np.sort(out.ravel()), np.sort(reference.ravel()), atol=1e-5)  # same size, distinct values
    assert np.array_equal(np.argsort(out.ravel()), np.argsort(source.ravel()))  # voxel ranks kept


def test_histogram_match_masks_and_sizes():
    rng = np.random.default_rng(1)
    source, reference = rng.random((12, 12, 12)), rng.exponential(size=(20, 20, 20))
    smask = np.zeros(source.shape, bool)
    smask[2:10, 2:10, 2:10] = True
    rmask = reference > 0.1
    out = histogram_match(source, reference, smask, rmask)
    assert np.all(out[~smask] == 0)
    q = np.linspace(0.05, 0.95, 19)
    assert np.allclose(np.quantile(out[smask], q), np.quantile(reference[rmask], q), atol=0.05)
    with pytest.raises(ValueError, match="source_mask"):
        histogram_match(source, reference, smask[:5])
    with pytest.raises(ValueError, match="reference_mask"):
        histogram_match(source, reference, smask, np.zeros(reference.shape, bool))


def test_best_correlated_picks_related_contrast():
    target = _smooth(seed=0) * 800 + 100
    mask = np.zeros(target.shape, bool)
    mask[2:14, 2:14, 2:14] = True
    rng = np.random.default_rng(2)
    available = {
        "noise": rng.random(target.shape),
        "inverted": 1.0 - target / 1000,  # perfectly anti-correlated: not picked
        "related": np.sqrt(target) + rng.normal(0, 0.05, target.shape),  # monotone + noise
        "other": _smooth(seed=5),
    }
    name, vol = best_correlated_baseline(available, target, mask)
    assert name == "related"
    assert np.all(vol[~mask] == 0)
    assert np.allclose(np.sort(vol[mask]), np.sort(target[mask]), rtol=1e-5)  # target's histogram
    assert pearson(vol, target, mask) > 0.99
    with pytest.raises(ValueError, match="empty"):
        best_correlated_baseline({}, target, mask)
    with pytest.raises(ValueError, match="available\\['x'\\]"):
        best_correlated_baseline({"x": target[:4]}, target, mask)


def test_mean_target_baseline():
    vols = [np.zeros((4, 5, 6)), np.ones((4, 5, 6)), np.full((4, 5, 6), 5.0)]
    out = mean_target_baseline(vols)
    assert out.dtype == np.float32 and out.shape == (4, 5, 6) and np.allclose(out, 2.0)
    assert np.allclose(mean_target_baseline(v for v in vols), 2.0)  # any iterable
    with pytest.raises(ValueError, match=r"\(4, 5, 5\)"):
        mean_target_baseline([vols[0], np.zeros((4, 5, 5))])
    with pytest.raises(ValueError, match="empty"):
        mean_target_baseline([])


def test_training_histogram_baseline_matches_mean_quantiles():
    rng = np.random.default_rng(3)
    mask = np.zeros((12, 12, 12), bool)
    mask[1:11, 1:11, 1:11] = True
    # two "training targets" with shifted distributions: the barycentre lies halfway
    q = np.mean([quantile_function(rng.normal(m, 1.0, mask.shape), mask) for m in (2.0, 4.0)], axis=0)
    assert q.shape == (1001,) and np.all(np.diff(q) >= 0)
    assert np.median(q) == pytest.approx(3.0, abs=0.1)
    source = _smooth((12, 12, 12), seed=4) * 100.0  # another scale entirely
    out = training_histogram_baseline(source, q, mask)
    assert out.dtype == np.float32 and np.all(out[~mask] == 0)
    assert np.all(np.diff(out[mask][np.argsort(source[mask])]) >= 0)  # monotone map: voxel order kept
    assert np.allclose(
        np.quantile(out[mask], [0.1, 0.5, 0.9]), np.interp([0.1, 0.5, 0.9], np.linspace(0, 1, q.size), q), atol=0.05
    )
    with pytest.raises(ValueError, match="non-decreasing"):
        training_histogram_baseline(source, q[::-1], mask)
    with pytest.raises(ValueError, match="num_quantiles"):
        quantile_function(source, mask, num_quantiles=1)
