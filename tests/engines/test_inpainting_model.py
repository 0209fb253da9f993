"""The conditional inpainting model's pieces: data framing shared with inference, random masks, batches, loss, records."""

import json

import monai.transforms as mt
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from wdm_bundle.data import build_datalist, inpainting_training_preprocessing
from wdm_bundle.data.inpainting_transforms import RandomHealthyMaskd, ScaleByPercentilesOfd, VoidImaged
from wdm_bundle.diffusion import InpaintingLoss, WaveletDiffusionInferer, make_scheduler
from wdm_bundle.engines import (
    LEGACY_RECORDS,
    InpaintingPrepareBatch,
    atomic_save,
    coefficient_mask,
    inpainting_preprocessing,
    load_record,
    validate_record,
)
from wdm_bundle.wavelets import HaarWavelet3D

SHAPE = (37, 41, 29)


def _oblique():
    angle = np.deg2rad(10)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine[:3, :3] = affine[:3, :3] @ np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]]) @ np.diag([1.1, 0.9, 1.3])
    affine[:3, 3] = [20.5, -30.25, 12.0]
    return affine


def _case(rng):
    image = np.zeros(SHAPE, np.float32)
    image[4:-4, 5:-5, 3:-3] = rng.random((29, 31, 23)) * 400 + 100
    mask = np.zeros(SHAPE, np.uint8)
    mask[12:21, 15:24, 10:17] = 1
    return image, mask


def _write(root, name, arrays, affine):
    paths = {}
    for key, data in arrays.items():
        path = root / name / f"{name}-{key}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), str(path))
        paths[key] = str(path)
    return paths


def test_void_and_scale_by_the_voided_percentiles():
    rng = np.random.default_rng(0)
    image, mask = _case(rng)
    item = {"image": torch.from_numpy(image)[None], "mask": torch.from_numpy(mask)[None]}
    voided = VoidImaged()(item)
    assert torch.equal(voided["image"], item["image"])  # the target is untouched
    expected = np.where(mask != 0, 0, image)
    assert np.array_equal(voided["voided"][0].numpy(), expected)
    scaled = ScaleByPercentilesOfd(["image", "voided"], "voided", 1.0, 99.0)(voided)
    lo, hi = np.percentile(expected.astype(np.float64), [1.0, 99.0])
    np.testing.assert_allclose(scaled["image"][0].numpy(), np.clip((image - lo) / (hi - lo), 0, 1), atol=1e-6)
    # with its own image as reference it is MONAI's ScaleIntensityRangePercentilesd
    own = ScaleByPercentilesOfd(["image"], "image", 1.0, 99.0)({"image": item["image"]})["image"]
    monai = mt.ScaleIntensityRangePercentiles(1.0, 99.0, 0.0, 1.0, clip=True)(item["image"])
    assert torch.equal(torch.as_tensor(own), torch.as_tensor(monai))


def test_random_masks_only_where_missing_in_the_brain_away_from_the_lesion():
    rng = np.random.default_rng(1)
    image, mask = _case(rng)
    lesion = np.zeros(SHAPE, np.float32)
    lesion[6:12, 8:16, 5:12] = 1
    meta = MetaTensor(torch.from_numpy(image)[None], affine=torch.as_tensor(_oblique()))
    given = {"image": meta, "mask": torch.from_numpy(mask)[None].float()}
    state = torch.get_rng_state()
    assert RandomHealthyMaskd()(given)["mask"] is given["mask"]
    assert torch.equal(state, torch.get_rng_state())  # nothing drawn for a case with its own mask
    drawn = []
    for _ in range(2):
        torch.manual_seed(3)
        drawn.append(RandomHealthyMaskd()({"image": meta, "mask_unhealthy": torch.from_numpy(lesion)[None]})["mask"])
    assert torch.equal(drawn[0], drawn[1])  # drawn from torch's generator (restored on resume)
    m = drawn[0][0].numpy() != 0
    assert m.any() and np.all(image[m] > 0) and not np.any(lesion[m] != 0)
    assert set(np.unique(drawn[0].numpy())) <= {0.0, 1.0} and np.array_equal(drawn[0].affine, meta.affine)
    # prob 1: a fresh mask even where the case has one; prob 0.5: some items keep theirs, some do not
    assert not torch.equal(RandomHealthyMaskd(prob=1.0)(given)["mask"], given["mask"])
    torch.manual_seed(0)
    kept = [RandomHealthyMaskd(prob=0.5)(given)["mask"] is given["mask"] for _ in range(12)]
    assert 0 < sum(kept) < 12
    with pytest.raises(ValueError, match="prob must be in"):
        RandomHealthyMaskd(prob=1.5)


def test_training_framing_equals_inference_framing(tmp_path):
    """A training item's voided image and mask are, bit for bit, what `inpaint_volume` makes of the challenge's
    voided file and mask (oblique, odd-sized), and its target image shares the voided image's intensity scale."""
    rng = np.random.default_rng(2)
    image, mask = _case(rng)
    voided = np.where(mask != 0, 0, image).astype(np.float32)
    paths = _write(tmp_path, "c", {"t1n": image, "mask-healthy": mask, "t1n-voided": voided}, _oblique())
    record = validate_record(
        {
            **LEGACY_RECORDS["generation"],
            "task": "inpainting",
            "pad_crop_size": [48, 32, 48],
            "image_size": [24, 16, 24],
            "data_range": [0.0, 1.0],
        }
    )
    train = inpainting_training_preprocessing(
        record["pad_crop_size"], "symmetric", record["clip_percentiles"], record["data_range"], record["image_size"]
    )({"image": paths["t1n"], "mask": paths["mask-healthy"]})
    affine = torch.as_tensor(_oblique())
    items = {"image": MetaTensor(torch.from_numpy(voided), affine=affine)}
    items["mask"] = MetaTensor(torch.from_numpy(mask.astype(np.float32)), affine=affine)
    infer = inpainting_preprocessing(record)(items)
    assert train["voided"].shape == (1, 24, 16, 24) and train["voided"].dtype == torch.float32
    assert torch.equal(train["voided"], infer["image"].as_tensor())
    assert torch.equal(train["mask"], infer["mask"].as_tensor())
    known = infer["mask"].as_tensor() == 0
    assert torch.allclose(train["image"][known], train["voided"][known])  # one intensity scale outside the mask


def test_prepare_batch_conditions_on_voided_and_mask_and_the_loss_regions():
    wavelet = HaarWavelet3D(3.0)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 8, 8, 8, generator=gen)
    mask = torch.zeros(2, 1, 8, 8, 8)
    mask[0, 0, 1:4, 2:5, 3:6] = 1  # sample 1 has no mask
    batch = {"image": image, "voided": image * (1 - mask), "mask": mask}
    scheduler = make_scheduler("ddpm")
    prepare = InpaintingPrepareBatch(1000, wavelet, scheduler=scheduler)
    x0, target, args, kwargs = prepare(batch, "cpu")
    assert torch.equal(x0, wavelet.encode(image)) and args == ()
    assert torch.equal(target[:, :8], x0)
    weight = torch.nn.functional.max_pool3d(mask, 2)
    assert torch.equal(target[:, 8:], weight) and torch.equal(coefficient_mask(mask), weight)
    condition = torch.cat([wavelet.encode(batch["voided"]), wavelet.encode(mask)], 1)
    assert torch.equal(kwargs["condition"], condition)
    pred = WaveletDiffusionInferer(scheduler, (0.0, 1.0))(x0, _Echo(), kwargs["noise"], kwargs["timesteps"], condition)
    assert pred.shape == x0.shape  # the inferer concatenates the 16 condition channels: 8 + 16 in

    pred = x0 + torch.randn(x0.shape, generator=gen)
    volume = InpaintingLoss("volume")(pred, target)
    assert torch.equal(volume, torch.nn.MSELoss()(pred, x0))
    err = ((pred - x0).double() ** 2).numpy()
    w = weight.double().numpy()
    expected = (err * w).sum() / (w.sum() * 8)
    assert abs(InpaintingLoss("mask")(pred, target).item() - expected) < 1e-6 * expected
    assert InpaintingLoss("mask")(pred, torch.cat([x0, torch.zeros_like(weight)], 1)).item() == 0.0
    with pytest.raises(ValueError, match="plus one mask channel"):
        InpaintingLoss()(pred, x0)
    with pytest.raises(ValueError, match="not a valid LossRegion"):
        InpaintingLoss("outside")


class _Echo(torch.nn.Module):
    def forward(self, x, timesteps, context=None):
        assert x.shape[1] == 24
        return x[:, :8]


def test_datalist_optional_keys(tmp_path):
    rng = np.random.default_rng(3)
    image, mask = _case(rng)
    _write(tmp_path, "a", {"t1n": image, "mask-healthy": mask}, np.eye(4))
    _write(tmp_path, "b", {"t1n": image}, np.eye(4))
    keys = {"image": "t1n", "mask": "mask-healthy", "mask_unhealthy": "mask-unhealthy"}
    entries = build_datalist(tmp_path, None, keys, optional=["mask", "mask_unhealthy"])
    assert [sorted(e) for e in entries] == [["case", "image", "mask"], ["case", "image"]]
    with pytest.raises(ValueError, match="lack a requested file"):
        build_datalist(tmp_path, None, keys, optional=["mask_unhealthy"])
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"image": "a/a-t1n.nii.gz"}]}))
    assert sorted(build_datalist(tmp_path, tmp_path / "list.json", keys, optional=["mask", "mask_unhealthy"])[0]) == [
        "case",
        "image",
    ]


def test_inference_config_takes_inpainting_and_wdm_records(tmp_path):
    base = dict(LEGACY_RECORDS["generation"])
    for task in ("inpainting", "generation"):
        atomic_save({"model": {}, "record": {**base, "task": task}}, tmp_path / f"{task}.pt")
        assert load_record(tmp_path / f"{task}.pt", ["inpainting", "generation"])["task"] == task
    atomic_save({"model": {}, "record": {**base, "task": "synthesis", "contrasts": ["a", "b"]}}, tmp_path / "s.pt")
    with pytest.raises(ValueError, match="synthesis model; use the synthesis configs \\(inference_cwdm.json\\)"):
        load_record(tmp_path / "s.pt", ["inpainting", "generation"])
    with pytest.raises(ValueError, match="inpainting model; use the inpainting configs \\(inference_inpaint.json\\)"):
        load_record(tmp_path / "inpainting.pt", "generation")


def test_prepare_batch_loss_region_at_two_wavelet_levels():
    """At ``wavelet_levels=2`` a coefficient covers a 4x4x4 block: the loss region follows, read from the condition."""
    wavelet = HaarWavelet3D(3.0, levels=2)
    image = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 16, 16, 16)
    mask[0, 0, 3:6, 5:11, 0:2] = 1
    prepare = InpaintingPrepareBatch(1000, wavelet, scheduler=make_scheduler("ddpm"))
    _, target, _, _ = prepare({"image": image, "voided": image * (1 - mask), "mask": mask}, "cpu")
    weight = torch.nn.functional.max_pool3d(mask, 4)
    assert target.shape == (1, 65, 4, 4, 4) and weight.sum() == 2 * 2 * 1
    assert torch.equal(target[:, 64:], weight) and torch.equal(coefficient_mask(mask, wavelet.scale), weight)
