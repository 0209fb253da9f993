"""Fréchet distance (eigh-based, float64) and streaming feature statistics."""

import numpy as np
import pytest
import torch
from scipy import linalg

from wdm_bundle.metrics.fid import FeatureStatistics, frechet_distance


def _stats(x):
    s = FeatureStatistics()
    for row in x:
        s.update(row)
    return s


def _scipy_fid(x, y):
    mu1, mu2, s1, s2 = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(50, 16))
    s = _stats(x)
    assert s.frechet_distance(s) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_scipy_sqrtm_and_grows_with_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8))
    base = rng.normal(size=(200, 8))
    values = []
    for sigma in (0.0, 0.5, 1.0, 2.0, 4.0):
        y = x + sigma * base
        values.append(frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)))
        assert values[-1] == pytest.approx(_scipy_fid(x, y), rel=1e-6, abs=1e-8)
    assert values[0] == pytest.approx(0.0, abs=1e-8)
    assert all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("n", [2, 7])
def test_small_n_is_real_and_finite(n):
    rng = np.random.default_rng(n)
    a, b = _stats(rng.normal(size=(n, 32))), _stats(rng.normal(size=(n, 32)) + 1.0)  # singular covariances (n < d)
    assert a.n == n and b.n == n
    value = a.frechet_distance(b)
    assert isinstance(value, float) and np.isfinite(value) and value > 0
    assert a.frechet_distance(a) == pytest.approx(0.0, abs=1e-8)


def test_streaming_statistics_equal_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(loc=1000.0, scale=3.0, size=(37, 5))  # large mean: naive sums would lose precision
    s = FeatureStatistics()
    s.update(x[0]).update(torch.as_tensor(x[1:10]))  # one vector, then a batch (torch)
    for row in x[10:]:
        s.update(row)
    assert s.n == 37
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


def test_errors():
    s = FeatureStatistics()
    with pytest.raises(ValueError, match="at least 2"):
        s.mean
    s.update(np.zeros(3))
    with pytest.raises(ValueError, match="at least 2 feature vectors; got 1"):
        s.covariance
    with pytest.raises(ValueError, match="feature size changed"):
        s.update(np.zeros(4))
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
