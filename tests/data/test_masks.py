"""Tests of the random healthy-tissue inpainting masks (wdm_bundle.data.masks)."""

from __future__ import annotations

import numpy as np
import pytest

from wdm_bundle.data.masks import placement_region, random_healthy_mask, tumour_like_blob, valid_centres


def _ball(shape, centre, radius):
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


@pytest.fixture(scope="module")
def brain_and_lesion():
    image = np.where(_ball((32, 32, 32), (16, 16, 16), 13), 500.0, 0.0).astype(np.float32)
    lesion = _ball((32, 32, 32), (16, 12, 16), 5)
    return image, lesion


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mask_inside_brain_disjoint_from_lesion_and_sized(brain_and_lesion, seed):
    image, lesion = brain_and_lesion
    num_brain = int((image > 0).sum())
    mask = random_healthy_mask(image, lesion, seed=seed, fraction=(0.01, 0.03), margin=2.0)
    assert mask.shape == image.shape and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    m = mask.astype(bool)
    assert np.all(image[m] > 0)
    assert not np.any(m & lesion)
    # margin 2: no mask voxel within distance 2 of the lesion
    lesion_pts, mask_pts = np.argwhere(lesion), np.argwhere(m)
    dmin = np.sqrt(((mask_pts[:, None, :] - lesion_pts[None, :, :]) ** 2).sum(-1)).min()
    assert dmin > 2.0
    assert np.ceil(0.01 * num_brain) <= m.sum() <= np.floor(0.03 * num_brain)


def test_deterministic_per_seed(brain_and_lesion):
    image, lesion = brain_and_lesion
    a = random_healthy_mask(image, lesion, seed=5)
    assert np.array_equal(a, random_healthy_mask(image, lesion, seed=5))
    assert np.array_equal(a, random_healthy_mask(image, lesion, seed=np.random.default_rng(5)))
    assert not np.array_equal(a, random_healthy_mask(image, lesion, seed=6))


def test_num_voxels_and_spacing(brain_and_lesion):
    image, _ = brain_and_lesion
    mask = random_healthy_mask(image, None, seed=0, num_voxels=(100, 120), spacing=(1.0, 2.0, 1.0))
    assert 100 <= mask.sum() <= 120
    assert np.all(image[mask > 0] > 0)


def test_blob_connected_centred_and_counted():
    from scipy import ndimage as ndi

    for seed in range(5):
        blob = tumour_like_blob(300, np.random.default_rng(seed))
        assert blob.dtype == bool and all(s % 2 == 1 for s in blob.shape)
        assert 0.9 * 300 <= blob.sum() <= 300
        assert ndi.label(blob)[1] == 1
    exact = tumour_like_blob(200, np.random.default_rng(0), roughness=0.0, num_lobes=1)
    assert exact.sum() == 200
    assert np.array_equal(exact, tumour_like_blob(200, np.random.default_rng(0), roughness=0.0, num_lobes=1))


def test_valid_centres_matches_brute_force():
    rng = np.random.default_rng(0)
    allowed = rng.random((10, 11, 9)) > 0.15
    blob = np.zeros((3, 3, 3), bool)
    blob[1, 1, :] = blob[0, 1, 1] = True
    got = valid_centres(allowed, blob)
    expected = np.zeros_like(allowed)
    for c in np.ndindex(allowed.shape):
        ok = True
        for k in np.argwhere(blob):
            p = np.asarray(c) + k - 1
            if np.any(p < 0) or np.any(p >= allowed.shape) or not allowed[tuple(p)]:
                ok = False
                break
        expected[c] = ok
    assert expected.any() and np.array_equal(got, expected)


def test_placement_region(brain_and_lesion):
    image, lesion = brain_and_lesion
    region = placement_region(image, lesion)
    assert np.array_equal(region, (image > 0) & ~lesion)
    assert placement_region(image, lesion, margin=3).sum() < region.sum()
    assert np.array_equal(placement_region(image, None), image > 0)


def test_errors(brain_and_lesion):
    image, lesion = brain_and_lesion
    with pytest.raises(ValueError, match="no brain voxel"):
        random_healthy_mask(np.zeros((16, 16, 16)))
    with pytest.raises(ValueError, match="No healthy mask"):  # larger than the brain
        random_healthy_mask(image, lesion, num_voxels=int((image > 0).sum()))
    with pytest.raises(ValueError, match="No healthy mask"):  # the lesion covers the brain
        random_healthy_mask(image, image > 0, fraction=0.01)
    with pytest.raises(ValueError, match="shape"):
        random_healthy_mask(image, lesion[:-1])
    with pytest.raises(ValueError, match="fraction"):
        random_healthy_mask(image, fraction=(0.2, 0.1))
    with pytest.raises(ValueError, match="D, H, W"):
        random_healthy_mask(image[0])
    with pytest.raises(ValueError, match="margin"):
        random_healthy_mask(image, lesion, margin=-1)
