"""BraTS labels <-> TC/WT/ET regions, intensity normalisation and the segmentation preprocessing."""

import nibabel as nib
import numpy as np
import pytest
import torch

from wdm_bundle.data.segmentation_transforms import (
    BratsRegionsd,
    labels_to_regions,
    normalize_intensity,
    regions_to_labels,
    segmentation_preprocessing,
)

CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]


def test_brats_2023_labels_hand_checked():
    seg = np.array([0, 1, 2, 3, 4]).reshape(1, 5, 1, 1)  # 4: not a 2023 label, background for the regions
    regions = labels_to_regions(seg)
    assert regions.shape == (3, 5, 1, 1) and regions.dtype == np.float32
    assert regions[:, :, 0, 0].tolist() == [
        [0, 1, 0, 1, 0],  # TC = NCR + ET
        [0, 1, 1, 1, 0],  # WT = NCR + SNFH + ET
        [0, 0, 0, 1, 0],  # ET
    ]
    old = labels_to_regions(np.array([0, 1, 2, 4]).reshape(4, 1, 1), labels=(1, 2, 4))  # pre-2023 ET label
    assert old[2, :, 0, 0].tolist() == [0, 0, 0, 1]


def test_torch_in_torch_out():
    seg = torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(1, 1, 4, 1, 1)
    regions = labels_to_regions(seg)
    assert isinstance(regions, torch.Tensor) and regions.shape == (3, 4, 1, 1)
    assert regions[1, :, 0, 0].tolist() == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="label map"):
        labels_to_regions(torch.zeros(2, 4, 4, 4))


def test_regions_round_trip():
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 4, (7, 6, 5)).astype(np.uint8)
    assert np.array_equal(regions_to_labels(labels_to_regions(seg)), seg)
    # any nested regions ET <= TC <= WT survive labels_to_regions(regions_to_labels(.))
    wt = rng.random((7, 6, 5)) < 0.6
    tc = wt & (rng.random(wt.shape) < 0.5)
    et = tc & (rng.random(wt.shape) < 0.5)
    regions = np.stack([tc, wt, et])
    labels = regions_to_labels(torch.from_numpy(regions))
    assert labels.dtype == np.uint8 and labels.shape == (7, 6, 5)
    assert np.array_equal(labels_to_regions(labels).astype(bool), regions)
    with pytest.raises(ValueError, match=r"\(3, X, Y, Z\)"):
        regions_to_labels(np.zeros((2, 4, 4, 4)))


def test_normalize_intensity():
    x = torch.zeros(2, 8, 8, 8)
    x[1] = torch.arange(512, dtype=torch.float32).reshape(8, 8, 8)
    out = normalize_intensity(x, (0.0, 100.0))
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(8, 8, 8))  # a constant channel: zeros, not NaN
    assert out[1].min() == 0 and out[1].max() == 1
    clipped = normalize_intensity(x, (10.0, 90.0))[1]
    assert clipped.min() == 0 and clipped.max() == 1 and (clipped == 1).sum() > 1
    with pytest.raises(ValueError, match="clip_percentiles"):
        normalize_intensity(x, (90.0, 10.0))


def test_regions_transform_refuses_unknown_labels():
    data = {"seg": torch.tensor([0.0, 1.0, 4.0]).reshape(1, 3, 1, 1)}
    with pytest.raises(ValueError, match=r"\[4\].*labels to \[1, 2, 4\]"):
        BratsRegionsd("seg")(data)
    out = BratsRegionsd("seg", labels=(1, 2, 4), output_keys="label")(data)
    assert out["label"].shape == (3, 3, 1, 1) and out["label"][2, :, 0, 0].tolist() == [0, 0, 1]


def _case(root, shape=(20, 18, 12)):
    rng = np.random.default_rng(1)
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS on disk: Orientationd flips the first axis
    entry = {"case": "c"}
    for i, c in enumerate([*CONTRASTS, "seg"]):
        data = rng.integers(0, 4, shape) if c == "seg" else rng.random(shape) * (i + 1) * 100
        if c == "t2f":
            data = np.zeros(shape)  # a blank contrast
        entry[c] = str(root / f"c-{c}.nii.gz")
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), entry[c])
    return entry


def test_preprocessing(tmp_path):
    entry = _case(tmp_path)
    out = segmentation_preprocessing(CONTRASTS, (0.1, 99.9), (16, 16, 16), train=False)(entry)
    assert set(out) == {"case", "image", "label"}
    assert out["image"].shape == (4, 20, 18, 12) and out["label"].shape == (3, 20, 18, 12)
    assert out["image"].dtype == torch.float32 and 0 <= out["image"].min() and out["image"].max() <= 1
    assert torch.equal(out["image"][3], torch.zeros(20, 18, 12))
    seg = nib.load(entry["seg"]).get_fdata()[::-1]  # to RAS
    assert np.array_equal(out["label"].numpy(), labels_to_regions(seg))
    torch.manual_seed(0)
    train = segmentation_preprocessing(CONTRASTS, (0.1, 99.9), (16, 16, 16), train=True)
    a = train(entry)
    assert a["image"].shape == (4, 16, 16, 16) and a["label"].shape == (3, 16, 16, 16)  # cropped, 12 padded to 16
    torch.manual_seed(0)
    b = train(entry)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])  # torch's seed decides
    c = train(entry)
    assert not torch.equal(a["image"], c["image"])
