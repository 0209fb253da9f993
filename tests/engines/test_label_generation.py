"""Label-conditioned sampling: the network sees exactly the DWT of the one-hot conditions; outputs land on the label
map's exact grid; brain mask fallback; overwrite refusal; the synthetic data set's datalist."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import DivisiblePad
from torch import nn

from wdm_bundle.data.label_maps import one_hot_conditions
from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler
from wdm_bundle.engines.label_generation import LabelImageGenerator, generate_contrasts
from wdm_bundle.engines.prepare_batch import LabelConditionPrepareBatch, label_condition
from wdm_bundle.engines.record import recorded_network, training_record
from wdm_bundle.networks import WaveletDiffusionUNet
from wdm_bundle.wavelets import HaarWavelet3D

CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]
LABELS = [1, 2, 3]


class ConditionEcho(nn.Module):
    """An x0-predicting stand-in that returns its condition coefficients rolled by one slot: contrast k is the
    one-hot condition k + 1 ([label == 1, label == 2, label == 3, brain]). It keeps every input it was given."""

    def __init__(self, num_contrasts=4, multiple=2):
        super().__init__()
        self.wavelet = HaarWavelet3D(3.0)
        self.out_channels = 8 * num_contrasts
        self.image_size_multiple = multiple
        self.inputs = []

    def forward(self, x, timesteps, context=None):
        self.inputs.append(x.clone())
        cond = x[:, self.out_channels :]
        return torch.cat([cond[:, 8:], cond[:, :8]], dim=1)[:, : self.out_channels]


def _record(pad_crop_size=None):
    return {
        "task": "label_generation",
        "contrasts": CONTRASTS,
        "labels": LABELS,
        "pad_crop_size": pad_crop_size,
        "placement": "end",
        "data_range": [0.0, 1.0],
    }


def _inferer(steps=2):
    return WaveletDiffusionInferer(make_scheduler("ddim", steps), data_range=(0.0, 1.0), diffusion="ddpm")


def _subject(shape, seed=0):
    """A label map with all three labels inside an ellipsoidal brain, and a skull-stripped image of it."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    brain = r < 0.9
    seg = np.zeros(shape, np.uint8)
    lesion = np.sqrt((grids[0] - 0.3) ** 2 + grids[1] ** 2 + grids[2] ** 2)
    seg[lesion < 0.35] = 2
    seg[lesion < 0.2] = 3
    seg[lesion < 0.1] = 1
    image = np.where(brain, 0.5 + np.random.default_rng(seed).random(shape), 0.0).astype(np.float32)
    return seg, brain, image


def _oblique_affine():
    rot = np.array([[0.0, 0.8, 0.6], [0.0, -0.6, 0.8], [1.0, 0.0, 0.0]])  # permuted axes, rotated
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 0.9, 2.5])
    affine[:3, 3] = [-20.0, 13.5, 7.25]
    return affine


def _write_case(root, case, seg, image, affine, brainmask=None):
    folder = root / case
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(seg, affine), str(folder / f"{case}-seg.nii.gz"))
    if image is not None:
        nib.save(nib.Nifti1Image(image, affine), str(folder / f"{case}-t2f.nii.gz"))
    if brainmask is not None:
        nib.save(nib.Nifti1Image(brainmask.astype(np.uint8), affine), str(folder / f"{case}-brainmask.nii.gz"))
    return folder


def test_network_sees_the_dwt_of_the_one_hot_conditions():
    seg, brain, image = _subject((37, 41, 29))
    net = ConditionEcho()
    out = generate_contrasts(net, _inferer(), seg, image, _record(), 0, "c1")
    expected = one_hot_conditions(torch.tensor(seg)[None], torch.tensor(image)[None], LABELS)
    framed = DivisiblePad(2, method="end")(expected)  # 37x41x29 -> 38x42x30, background after the last voxel
    condition = label_condition(net.wavelet, framed[None].as_tensor())
    assert len(net.inputs) == 2 and condition.shape == (1, 32, 19, 21, 15)
    for x in net.inputs:
        assert torch.equal(x[:, 32:], condition)
    # contrast k = the condition k + 1; outside the brain 0
    want = np.stack([seg == 1, seg == 2, seg == 3, brain]).astype(np.float32)
    assert out.shape == (4, 37, 41, 29) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_prepare_batch_uses_the_same_condition():
    wavelet = HaarWavelet3D(3.0)
    images, conditions = torch.rand(2, 4, 8, 8, 8), (torch.rand(2, 4, 8, 8, 8) > 0.5).float()
    pb = LabelConditionPrepareBatch(1000, wavelet, num_contrasts=4, num_conditions=4)
    x0, target, _, kwargs = pb({"images": images, "conditions": conditions})
    assert torch.equal(kwargs["condition"], label_condition(wavelet, conditions))
    assert torch.equal(x0, wavelet.encode(images)) and torch.equal(target, x0)
    with pytest.raises(ValueError, match="condition channels"):
        pb({"images": images, "conditions": conditions[:, :3]})


def _generator(tmp_path, net, record=None, inferer=None, **kwargs):
    inferer = inferer or _inferer()
    options = dict(input_dir=tmp_path / "in", output_dir=tmp_path / "out", progress=False) | kwargs
    return LabelImageGenerator(record or _record(), net, inferer, inferer.scheduler, **options)


def test_oblique_permuted_odd_case_on_the_exact_grid(tmp_path):
    seg, brain, image = _subject((37, 41, 29))
    affine = _oblique_affine()
    _write_case(tmp_path / "in", "case-a", seg, image, affine)
    written = _generator(tmp_path, ConditionEcho()).run()
    assert [w["case"] for w in written] == ["case-a"]
    want = np.stack([seg == 1, seg == 2, seg == 3, brain]).astype(np.float32)
    for k, c in enumerate(CONTRASTS):
        img = nib.load(str(tmp_path / "out" / "case-a" / f"case-a-{c}.nii.gz"))
        assert img.shape == seg.shape and np.array_equal(
            img.affine, nib.load(str(tmp_path / "in/case-a/case-a-seg.nii.gz")).affine
        )
        assert img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.get_fdata(), want[k], atol=1e-5)
    copied = nib.load(str(tmp_path / "out" / "case-a" / "case-a-seg.nii.gz"))
    assert np.array_equal(np.asarray(copied.dataobj), seg)
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert datalist["training"] == [{"case": "case-a", **{c: f"case-a/case-a-{c}.nii.gz" for c in [*CONTRASTS, "seg"]}}]


def test_brain_mask_file_first_then_contrast_fallback(tmp_path):
    seg, brain, image = _subject((16, 16, 12))
    half = brain.copy()
    half[:8] = False  # a brain mask file that differs from the image's non-zero voxels
    half |= seg > 0
    _write_case(tmp_path / "in", "with-mask", seg, image, np.eye(4), brainmask=half)
    _write_case(tmp_path / "in", "no-mask", seg, image, np.eye(4))
    _generator(tmp_path, ConditionEcho()).run()
    t2f = {c: nib.load(str(tmp_path / "out" / c / f"{c}-t2f.nii.gz")).get_fdata() for c in ("with-mask", "no-mask")}
    np.testing.assert_allclose(t2f["with-mask"], half, atol=1e-5)
    np.testing.assert_allclose(t2f["no-mask"], brain, atol=1e-5)
    (tmp_path / "in" / "lonely").mkdir()
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(tmp_path / "in" / "lonely" / "lonely-seg.nii.gz"))
    with pytest.raises(ValueError, match="case 'lonely'"):
        _generator(tmp_path, ConditionEcho(), output_dir=tmp_path / "out2").run()


def test_overwrite_refused_then_allowed_and_cases_restricted(tmp_path):
    seg, _, image = _subject((16, 16, 12))
    for case in ("a1", "b2"):
        _write_case(tmp_path / "in", case, seg, image, np.eye(4))
    assert [w["case"] for w in _generator(tmp_path, ConditionEcho(), cases=["b2"]).run()] == ["b2"]
    assert not (tmp_path / "out" / "a1").exists()
    net = ConditionEcho()
    with pytest.raises(FileExistsError, match="b2-t1n.nii.gz"):
        _generator(tmp_path, net).run()
    assert not net.inputs and not (tmp_path / "out" / "a1").exists()  # refused before any sampling
    assert len(_generator(tmp_path, ConditionEcho(), overwrite=True).run()) == 2
    with pytest.raises(ValueError, match="zz"):
        _generator(tmp_path, ConditionEcho(), cases=["zz"], overwrite=True).run()
    with pytest.raises(ValueError, match="not a plain folder name"):
        _generator(tmp_path, ConditionEcho(), cases=["../in/a1"])


def test_bad_label_maps_stop_before_sampling(tmp_path):
    seg, _, image = _subject((16, 16, 12))
    _write_case(tmp_path / "in", "good", seg, image, np.eye(4))
    _write_case(tmp_path / "in", "bad", np.where(seg == 2, 5, seg).astype(np.uint8), image, np.eye(4))
    net = ConditionEcho()
    with pytest.raises(ValueError, match=r"bad-seg.nii.gz: holds label values \[5\]"):
        _generator(tmp_path, net).run()
    assert not net.inputs


def test_brats_size_case_with_a_tiny_network(tmp_path):
    seg, brain, image = _subject((240, 240, 155))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [120.0, 120.0, -77.0]
    _write_case(tmp_path / "in", "brats", seg, image, affine)
    net = WaveletDiffusionUNet(4, 4, channels=[8, 8], num_res_blocks=1, norm_num_groups=8).eval()
    _generator(tmp_path, net, record=_record([224, 224, 160]), inferer=_inferer(1)).run()
    for c in CONTRASTS:
        img = nib.load(str(tmp_path / "out" / "brats" / f"brats-{c}.nii.gz"))
        assert img.shape == (240, 240, 155) and np.array_equal(img.affine, affine)
        out = img.get_fdata()
        assert 0.0 <= out.min() and out.max() <= 1.0 and not out[~brain].any()


def test_deterministic_per_case_seed():
    seg, _, image = _subject((16, 16, 12))
    torch.manual_seed(0)
    net = WaveletDiffusionUNet(4, 4, channels=[8], num_res_blocks=1, norm_num_groups=8).eval()
    for p in net.parameters():  # MONAI zero-initialises the output layer: an untrained net ignores its noise
        p.data.normal_(0.0, 0.1)
    run = [generate_contrasts(net, _inferer(2), seg, image, _record(), 0, c) for c in ("a", "a", "b")]
    assert np.array_equal(run[0], run[1]) and not np.array_equal(run[0], run[2])


def test_record_rebuilds_the_network():
    net = WaveletDiffusionUNet(2, 4, channels=[8], num_res_blocks=1, norm_num_groups=8)
    record = training_record(
        task="label_generation",
        diffusion="ddpm",
        scheduler=make_scheduler("ddpm"),
        network=net,
        data_range=[0.0, 1.0],
        image_size=[16, 16, 16],
        pad_crop_size=None,
        placement="end",
        clip_percentiles=[0.1, 99.9],
        contrasts=["t1c", "t2f"],
        labels=[1, 2, 3],
    )
    assert record["task"] == "label_generation" and record["labels"] == [1, 2, 3]
    rebuilt = recorded_network(record)
    assert rebuilt.in_channels == 8 * (2 + 4) and rebuilt.out_channels == 16
