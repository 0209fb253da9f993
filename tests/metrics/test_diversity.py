"""MS-SSIM diversity over pairs of volumes (MONAI MultiScaleSSIMMetric)."""

import nibabel as nib
import numpy as np
import pytest
import torch

from wdm_bundle.metrics.diversity import (
    ms_ssim,
    ms_ssim_diversity,
    ms_ssim_min_size,
    sample_pairs,
    truncated_ms_ssim_weights,
)

W3 = truncated_ms_ssim_weights(3)


def test_min_size_follows_monai():
    assert ms_ssim_min_size(5, 7) == 112 and ms_ssim_min_size(3, 7) == 28
    x = torch.rand(32, 32, 32)
    with pytest.raises(ValueError, match="needs 3D volumes of >= 112 voxels"):
        ms_ssim(x, x)
    assert sum(W3) == pytest.approx(1.0)


def test_ms_ssim_of_a_volume_with_itself_is_one():
    x = torch.rand(32, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ms_ssim(x, x, weights=W3) == pytest.approx(1.0, abs=1e-5)
    assert ms_ssim(x, torch.rand(32, 32, 32), weights=W3) < 0.5


def test_pairs_all_or_seeded_subset():
    assert sample_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    sub = sample_pairs(30, max_pairs=10, seed=3)
    assert len(sub) == 10 and len(set(sub)) == 10 and all(i < j < 30 for i, j in sub)
    assert sub == sample_pairs(30, max_pairs=10, seed=3) != sample_pairs(30, max_pairs=10, seed=4)
    with pytest.raises(ValueError, match="at least 2 volumes"):
        sample_pairs(1)


def test_diversity_from_files_identical_vs_random(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(-1, 1, (32, 32, 32)).astype(np.float32)
    same, diff = [], []
    for i in range(3):
        nib.save(nib.Nifti1Image(base, np.eye(4)), tmp_path / f"same_{i}.nii.gz")
        nib.save(
            nib.Nifti1Image(rng.uniform(-1, 1, (32, 32, 32)).astype(np.float32), np.eye(4)), tmp_path / f"r_{i}.nii.gz"
        )
        same.append(tmp_path / f"same_{i}.nii.gz")
        diff.append(str(tmp_path / f"r_{i}.nii.gz"))
    r_same = ms_ssim_diversity(same, (-1, 1), weights=W3)
    r_diff = ms_ssim_diversity(diff, (-1, 1), weights=W3, max_pairs=2, seed=0)
    assert r_same["value"] == pytest.approx(1.0, abs=1e-5) and r_same["num_pairs"] == 3
    assert r_diff["value"] < 0.5 and r_diff["num_pairs"] == 2 and r_diff["num_volumes"] == 3
