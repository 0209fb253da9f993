"""Tests of wdm_bundle.metrics.segmentation: BraTS region Dice/HD95, the panoptica and MONAI backends agree."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from wdm_bundle.metrics.segmentation import HD95_EMPTY, REGIONS, brats_region_metrics, resolve_backend

HAS_PANOPTICA = resolve_backend("auto") == "panoptica"
needs_panoptica = pytest.mark.skipif(not HAS_PANOPTICA, reason="brats-evaluation (panoptica) not installed")

# measured on these fixtures: |Dice difference| <= 3e-8 (MONAI's float32), |HD95 difference| <= 8e-7 voxels
DICE_TOL, HD95_TOL = 1e-6, 1e-5


def _tumour(shape, rng, n=2) -> np.ndarray:
    """(D, H, W) uint8 BraTS labels: ``n`` nested spheres (SNFH shell, NCR, ET core), some touching the border."""
    labels = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    for _ in range(n):
        centre = [rng.integers(0, s) for s in shape]
        radius = rng.uniform(2, min(shape) / 3)
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        labels[dist < radius] = 2
        labels[dist < 0.6 * radius] = 1
        labels[dist < 0.3 * radius] = 3
    return labels


def _perturbed(labels: np.ndarray, rng, noise: float) -> np.ndarray:
    """``labels`` shifted by up to 2 voxels, with a fraction ``noise`` of voxels set to random labels."""
    out = ndimage.shift(labels, rng.integers(-2, 3, 3), order=0)
    return np.where(rng.random(labels.shape) < noise, rng.integers(0, 4, labels.shape), out).astype(np.uint8)


def _fixtures():
    """(pred, ref, spacing) triples: odd and anisotropic shapes and spacings, noise, and empty regions."""
    out = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        shape = tuple(int(s) for s in rng.integers(9, 33, 3))
        spacing = tuple(float(s) for s in rng.choice([0.8, 1.0, 1.5, 3.0], 3))
        ref = _tumour(shape, rng)
        out.append((_perturbed(ref, rng, 0.1 if seed % 2 else 0.0), ref, spacing))
    ref = _tumour((15, 20, 11), np.random.default_rng(9))
    no_et = np.where(ref == 3, 1, ref).astype(np.uint8)
    out += [(no_et, ref, (1.0, 1.0, 1.0)), (ref, no_et, (1.0, 2.0, 1.0)), (np.zeros_like(ref), ref, (1.0, 1.0, 1.0))]
    return out


FIXTURES = _fixtures()


@needs_panoptica
@pytest.mark.parametrize("index", range(len(FIXTURES)))
def test_backends_agree(index):
    pred, ref, spacing = FIXTURES[index]
    # panoptica's global HD95 ignores the spacing (voxels), so compare at unit spacing; Dice does not depend on it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = brats_region_metrics(pred, ref, spacing, backend="panoptica")
    ours = brats_region_metrics(pred, ref, (1.0, 1.0, 1.0), backend="monai")
    for region in REGIONS:
        assert ours[region]["dice"] == pytest.approx(official[region]["dice"], abs=DICE_TOL), region
        assert ours[region]["hd95"] == pytest.approx(official[region]["hd95"], abs=HD95_TOL), region


@needs_panoptica
def test_panoptica_warns_that_it_ignores_the_spacing():
    pred, ref, _ = FIXTURES[0]
    with pytest.warns(UserWarning, match="HD95 in voxels"):
        brats_region_metrics(pred, ref, (1.0, 1.0, 3.0), backend="panoptica")


@pytest.mark.parametrize("backend", ["monai", pytest.param("panoptica", marks=needs_panoptica)])
def test_edge_cases_follow_brats(backend):
    ref = np.zeros((12, 13, 11), np.uint8)
    ref[3:8, 3:8, 3:8] = 2
    ref[4:7, 4:7, 4:7] = 1
    # ET: both empty -> 1 / 0; prediction empty -> 0 / max
    empty = brats_region_metrics(np.zeros_like(ref), ref, backend=backend)
    assert empty["ET"] == {"dice": 1.0, "hd95": 0.0}
    assert empty["WT"] == empty["TC"] == {"dice": 0.0, "hd95": HD95_EMPTY}
    # reference empty for ET only
    pred = ref.copy()
    pred[5, 5, 5] = 3
    result = brats_region_metrics(pred, ref, backend=backend)
    assert result["ET"] == {"dice": 0.0, "hd95": HD95_EMPTY}
    assert result["WT"] == {"dice": 1.0, "hd95": 0.0} and result["TC"] == {"dice": 1.0, "hd95": 0.0}
    # both non-empty without overlap -> HD95 at its maximum (panoptica's zero-TP rule)
    apart = np.zeros_like(ref)
    apart[9:11, 9:11, 9:10] = 2
    assert brats_region_metrics(apart, ref, backend=backend)["WT"] == {"dice": 0.0, "hd95": HD95_EMPTY}


def test_monai_uses_the_spacing():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:15, 5:15, 5:15] = 2
    pred = np.zeros_like(ref)
    pred[5:15, 5:15, 7:17] = 2  # shifted by 2 voxels along the last axis
    unit = brats_region_metrics(pred, ref, (1.0, 1.0, 1.0), backend="monai")["WT"]
    aniso = brats_region_metrics(pred, ref, (1.0, 1.0, 2.5), backend="monai")["WT"]
    assert unit["dice"] == pytest.approx(0.8) and aniso["dice"] == pytest.approx(0.8)
    assert unit["hd95"] == pytest.approx(2.0) and aniso["hd95"] == pytest.approx(5.0)


def test_errors_name_the_problem():
    ref = np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="one shape"):
        brats_region_metrics(ref[:7], ref)
    with pytest.raises(ValueError, match="labels 0..4"):
        brats_region_metrics(ref + 7, ref)
    with pytest.raises(ValueError, match="spacing"):
        brats_region_metrics(ref, ref, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="backend"):
        brats_region_metrics(ref, ref, backend="medpy")
