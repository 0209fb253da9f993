"""Tests of wdm_bundle.metrics.paired: MSE/PSNR/SSIM, whole volume and masked, and percentile normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import SSIMMetric
from scipy import ndimage as ndi

from wdm_bundle.metrics.paired import METRIC_KEYS, normalize_percentiles, paired_metrics


def _smooth(shape=(16, 16, 16), seed=0):
    x = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return (x - x.min()) / (x.max() - x.min())


def test_identical_volumes():
    x = _smooth()
    m = paired_metrics(x, x)
    assert set(m) == set(METRIC_KEYS)
    assert m["mse"] == 0 and m["mse_mask"] == 0
    assert m["psnr"] == math.inf and m["psnr_mask"] == math.inf  # no cap: MSE 0 -> inf
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5) and m["ssim_mask"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_psnr_mse_match_numpy(data_range):
    x = _smooth() * data_range
    y = np.clip(x + np.random.default_rng(1).normal(0, 0.05 * data_range, x.shape), 0, data_range)
    mask = x > 0.3 * data_range
    m = paired_metrics(y, x, mask=mask, data_range=data_range)
    mse, mse_mask = np.mean((y - x) ** 2), np.mean((y[mask] - x[mask]) ** 2)
    assert m["mse"] == pytest.approx(mse, rel=1e-9) and m["mse_mask"] == pytest.approx(mse_mask, rel=1e-9)
    assert m["psnr"] == pytest.approx(10 * np.log10(data_range**2 / mse), rel=1e-9)
    assert m["psnr_mask"] == pytest.approx(10 * np.log10(data_range**2 / mse_mask), rel=1e-9)
    # whole-volume SSIM is MONAI's SSIMMetric (3D, Gaussian window 11, sigma 1.5)
    ref = SSIMMetric(spatial_dims=3, data_range=data_range)(
        torch.as_tensor(y)[None, None], torch.as_tensor(x)[None, None]
    )
    assert m["ssim"] == pytest.approx(float(ref), abs=1e-6)
    assert 0 < m["ssim"] < 1
    # torch input gives the same numbers
    mt = paired_metrics(torch.as_tensor(y), torch.as_tensor(x), mask=torch.as_tensor(mask), data_range=data_range)
    assert mt == pytest.approx(m)


def test_error_outside_mask():
    x = _smooth((24, 24, 24))
    y = x.copy()
    y[:3] = 1.0 - y[:3]  # error in one border slab only
    mask = np.zeros(x.shape, bool)
    mask[8:16, 8:16, 8:16] = True  # SSIM windows centred here do not reach the slab
    m = paired_metrics(y, x, mask=mask)
    assert m["mse"] > 0 and m["mse_mask"] == 0 and m["psnr_mask"] == math.inf
    assert m["ssim"] < 0.99 and m["ssim_mask"] == pytest.approx(1.0, abs=1e-5)
    whole = paired_metrics(y, x)  # no mask: the *_mask values are the whole-volume ones
    assert whole["ssim_mask"] == pytest.approx(whole["ssim"], abs=1e-6) and whole["mse_mask"] == whole["mse"]


def test_errors():
    x = _smooth()
    with pytest.raises(ValueError, match=r"\(16, 16, 16\) and \(16, 16, 12\)"):
        paired_metrics(x, x[..., :12])
    with pytest.raises(ValueError, match="'mask' is empty"):
        paired_metrics(x, x, mask=np.zeros(x.shape, bool))
    with pytest.raises(ValueError, match="win_size"):
        paired_metrics(x[:8], x[:8])
    assert paired_metrics(x[:8], x[:8], win_size=7)["ssim"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="3D"):
        paired_metrics(x[0], x[0])


def test_normalize_percentiles():
    rng = np.random.default_rng(0)
    vol = np.zeros((16, 16, 16), np.float32)
    brain = np.zeros(vol.shape, bool)
    brain[4:12, 4:12, 4:12] = True
    vol[brain] = rng.uniform(100, 1000, brain.sum())
    vol[4, 4, 4] = 1e5  # outlier, clipped
    out = normalize_percentiles(vol, mask=brain)
    assert out.dtype == np.float32 and out.shape == vol.shape
    assert out.min() == 0 and out.max() == 1 and np.all(out[~brain] == 0)
    lo, hi = np.percentile(vol[brain], [0.1, 99.9])
    inside = (vol > lo) & (vol < hi)
    assert np.allclose(out[inside], (vol[inside] - lo) / (hi - lo), atol=1e-6)
    # without a mask the percentiles come from the whole volume (mostly background 0)
    assert not np.allclose(normalize_percentiles(vol), out)
    assert np.all(normalize_percentiles(np.full((4, 4, 4), 7.0)) == 0)
    with pytest.raises(ValueError, match="lower"):
        normalize_percentiles(vol, lower=50, upper=10)
    with pytest.raises(ValueError, match="'mask' is empty"):
        normalize_percentiles(vol, mask=np.zeros(vol.shape, bool))
