"""Inpainting of case folders, with a conditional inpainting model or zero-shot (RePaint with a WDM model): geometry,
exactness, per-case errors."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from oracles import Oracle

from wdm_bundle.data.demo_inpainting import make_inpainting_dataset
from wdm_bundle.diffusion import RePaintInferer, WaveletDiffusionInferer, make_scheduler
from wdm_bundle.engines import (
    LEGACY_RECORDS,
    Inpainter,
    atomic_save,
    inpaint_volume,
    inpainting_inferer,
    inpainting_preprocessing,
    validate_record,
)

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (37, 41, 29)  # odd sizes: the symmetric pad's odd voxel goes after
FRAME, GRID = [48, 32, 48], [24, 16, 24]  # in RAS axis order (the input is 41 x 29 x 37 there); area resize by 2
RAS = np.array([[0, 1], [1, 1], [2, 1]])
INPAINT_CONFIGS = ["train.json", "train_inpaint.json", "demo.json"]


def _record(**kw):
    base = LEGACY_RECORDS["generation"]
    network = {**base["network"], "channels": [8, 8], "num_res_blocks": 1, "norm_num_groups": 8}
    record = {**base, "pad_crop_size": FRAME, "image_size": GRID, "clip_percentiles": [0.1, 99.9], "network": network}
    return validate_record({**record, **kw})


def _oblique_affine():
    """Axes permuted and flipped (so reorienting to RAS moves voxels) and 10 degrees off the nearest axes."""
    angle = np.deg2rad(10)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    perm = np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]], float)  # i -> -S, j -> -R, k -> A
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag([1.1, 0.9, 1.3])
    affine[:3, 3] = [20.5, -30.25, 12.0]
    return affine


def _case_arrays(seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros(SHAPE, np.float32)
    image[4:-4, 5:-5, 3:-3] = rng.random((29, 31, 23)).astype(np.float32) * 400 + 100
    mask = np.zeros(SHAPE, np.uint8)
    mask[12:21, 15:24, 10:17] = 1
    mask[20, 14, 9] = 1  # an odd corner voxel
    return image * (1 - mask), mask


def _save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, _oblique_affine() if affine is None else affine)
    img.header["descrip"] = b"input header"
    nib.save(img, str(path))


def _write_case(root, name, voided=None, mask=None, mask_affine=None):
    v, m = _case_arrays(len(name))
    voided, mask = (v if voided is None else voided), (m if mask is None else mask)
    if voided is not False:
        _save(root / name / f"{name}-t1n-voided.nii.gz", voided)
    if mask is not False:
        _save(root / name / f"{name}-mask.nii.gz", mask, mask_affine)


def _target(data_range=(-1.0, 1.0)):
    """The model-grid volume the oracle always predicts, inside ``data_range`` (so the sampler's clamp is a no-op)."""
    lo, hi = data_range
    t = torch.rand(1, 1, *GRID, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return (lo + (hi - lo) * (0.05 + 0.9 * t)).float()


class ConditionedOracle(Oracle):
    """`Oracle` that keeps the channels it was given last: x_t (8) and the inpainting condition (16)."""

    out_channels = 8

    def forward(self, x, timesteps, context=None):
        self.last_input = x
        return super().forward(x, timesteps, context)


def _oracle_and_inferer(target, sampler="ddim", steps=4, jump_length=1, jump_n_sample=2, task="generation"):
    scheduler = make_scheduler(sampler, steps)
    inferer = inpainting_inferer(_record(task=task), scheduler, jump_length, jump_n_sample)
    oracle = ConditionedOracle(None)
    oracle.target = inferer._coder(oracle).encode(target)
    return oracle, inferer, scheduler


def _expected(target, voided, mask, affine, clip=(0.1, 99.9), data_range=(-1.0, 1.0)):
    """What an always-right oracle implies, by nibabel and numpy alone: the target upsampled by 2 (an area resize
    up by an integer factor repeats voxels), the symmetric padding cut off, reoriented from RAS back to the input
    axes, mapped from ``data_range`` to [0, 1] and through the inverse of the percentile scaling."""
    up = target[0, 0].double().numpy()
    for axis in range(3):
        up = np.repeat(up, 2, axis=axis)
    ornt = nib.io_orientation(affine)
    ras_shape = nib.apply_orientation(np.zeros(SHAPE), ornt).shape
    start = [(f - s) // 2 for f, s in zip(FRAME, ras_shape)]
    ras = up[tuple(slice(b, b + s) for b, s in zip(start, ras_shape))]
    back = nib.apply_orientation(ras, nib.orientations.ornt_transform(RAS, ornt))
    p_lo, p_hi = np.percentile(voided.astype(np.float64), clip)
    values = p_lo + (back - data_range[0]) / (data_range[1] - data_range[0]) * (p_hi - p_lo)
    return np.where(mask != 0, values, voided), p_hi - p_lo


def test_inferer_suits_the_record():
    scheduler = make_scheduler("ddim", 4)
    assert isinstance(inpainting_inferer(_record(), scheduler, 1, 2), RePaintInferer)
    conditional = inpainting_inferer(_record(task="inpainting"), scheduler)
    assert type(conditional) is WaveletDiffusionInferer and conditional.data_range == (-1.0, 1.0)
    with pytest.raises(ValueError, match="synthesis model; inpainting needs"):
        inpainting_inferer({**_record(), "task": "synthesis"}, scheduler)
    voided, mask = _case_arrays()
    with pytest.raises(ValueError, match="needs a RePaintInferer"):
        inpaint_volume(Oracle(None), conditional, voided, mask, _record())


@pytest.mark.parametrize("task", ["generation", "inpainting"])
def test_inpaint_volume_is_the_oracle_inside_and_the_input_outside(task):
    voided, mask = _case_arrays()
    target = _target()
    oracle, inferer, scheduler = _oracle_and_inferer(target, task=task)
    record = _record(task=task)
    out = inpaint_volume(oracle, inferer, voided, mask, record, 3, "c", scheduler=scheduler, affine=_oblique_affine())
    if task == "inpainting":  # x_t, then the DWT of the framed voided image and of the model-grid mask
        affine = torch.as_tensor(_oblique_affine())
        items = {
            k: MetaTensor(torch.from_numpy(v.astype(np.float32)), affine=affine)
            for k, v in [("image", voided), ("mask", mask)]
        }
        framed = inpainting_preprocessing(record)(items)
        condition = oracle.last_input[0, 8:]
        decoded = [oracle.wavelet.decode(condition[None, i : i + 8])[0, 0] for i in (0, 8)]
        assert oracle.last_input.shape[1] == 24
        torch.testing.assert_close(decoded[0], framed["image"][0].as_tensor(), rtol=0, atol=1e-6)
        torch.testing.assert_close(decoded[1], (framed["mask"][0] > 0).float().as_tensor(), rtol=0, atol=1e-6)
    assert out.shape == SHAPE and out.dtype == np.float32
    assert np.array_equal(out[mask == 0], voided[mask == 0])  # bit for bit
    expected, scale = _expected(target, voided, mask, _oblique_affine())
    # float32 rounding only: the DWT round trip and RePaint's blends (a few ulp of values <= 1) and the affine
    # maps to the input's units, so 1e-5 of the [p_lo, p_hi] range.
    np.testing.assert_allclose(out[mask == 1], expected[mask == 1], rtol=0, atol=1e-5 * scale)
    assert oracle.calls > 0


def test_geometry_header_and_bad_cases(tmp_path):
    root, out_dir = tmp_path / "in", tmp_path / "out"
    _write_case(root, "a_good")
    _write_case(root, "b_no_mask", mask=False)
    _write_case(root, "c_no_image", voided=False)
    _write_case(root, "d_shape", mask=np.ones((37, 41, 28), np.uint8))
    _write_case(root, "e_affine", mask_affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    _write_case(root, "f_empty", mask=np.zeros(SHAPE, np.uint8))
    nonbinary = _case_arrays()[1] * 2
    _write_case(root, "g_nonbinary", mask=nonbinary)
    outside = np.zeros(SHAPE, np.uint8)
    outside[0:2, 0:2, 0:2] = 1  # the background corner, two voxels away from the brain
    _write_case(root, "h_outside", mask=outside)
    corner = np.zeros(SHAPE, np.uint8)
    corner[0:4, 0:5, 0:3] = 1  # touches the brain (which starts at [4, 5, 3]) diagonally: accepted
    _write_case(root, "i_touching", mask=corner)
    (root / "j_unreadable").mkdir()
    (root / "j_unreadable" / "j_unreadable-t1n-voided.nii.gz").write_bytes(b"garbage")
    _save(root / "j_unreadable" / "j_unreadable-mask.nii.gz", _case_arrays()[1])

    oracle, inferer, scheduler = _oracle_and_inferer(_target(), steps=2, jump_n_sample=1)
    inpainter = Inpainter(oracle, inferer, scheduler, _record(), root, out_dir, progress=False)
    with pytest.raises(RuntimeError, match="8 of 10 case") as err:
        inpainter.run()
    msg = str(err.value)
    assert "b_no_mask: no mask file" in msg and "c_no_image: no image file" in msg
    assert "d_shape: mask shape (37, 41, 28) differs from the image's (37, 41, 29)" in msg
    assert "e_affine: mask affine differs" in msg
    assert "f_empty: mask is empty" in msg
    assert "g_nonbinary: mask is not binary" in msg
    assert "h_outside: mask is outside the brain" in msg
    assert "j_unreadable-t1n-voided.nii.gz: cannot be read" in msg
    summary = json.loads((out_dir / "inpainting_summary.json").read_text())
    assert (summary["num_ok"], summary["num_failed"]) == (2, 8)
    assert sorted(p.name for p in out_dir.glob("*.nii.gz")) == [
        "a_good-t1n-inference.nii.gz",
        "i_touching-t1n-inference.nii.gz",
    ]

    ref = nib.load(root / "a_good" / "a_good-t1n-voided.nii.gz")
    out = nib.load(out_dir / "a_good-t1n-inference.nii.gz")
    assert out.shape == ref.shape and out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert out.header["descrip"] == ref.header["descrip"]
    assert np.allclose(out.header.get_zooms(), ref.header.get_zooms())
    assert out.get_qform(coded=True)[1] == ref.get_qform(coded=True)[1]
    assert out.get_sform(coded=True)[1] == ref.get_sform(coded=True)[1]
    mask = nib.load(root / "a_good" / "a_good-mask.nii.gz").get_fdata() == 1
    data, voided = out.get_fdata(dtype=np.float32), ref.get_fdata(dtype=np.float32)
    assert np.array_equal(data[~mask], voided[~mask])
    assert data[mask].min() > 0  # the oracle's tissue, not the voided zeros


def test_existing_output_is_kept_without_overwrite(tmp_path):
    root, out_dir = tmp_path / "in", tmp_path / "out"
    _write_case(root, "a")
    out_dir.mkdir()
    earlier = out_dir / "a-t1n-inference.nii.gz"
    earlier.write_bytes(b"an earlier result")
    oracle, inferer, scheduler = _oracle_and_inferer(_target(), steps=2, jump_n_sample=1)
    results = Inpainter(oracle, inferer, scheduler, _record(), root, out_dir, progress=False).run()
    assert [(r.case, r.status) for r in results] == [("a", "exists")] and oracle.calls == 0
    assert earlier.read_bytes() == b"an earlier result"
    results = Inpainter(oracle, inferer, scheduler, _record(), root, out_dir, overwrite=True, progress=False).run()
    assert [(r.case, r.status) for r in results] == [("a", "ok")]
    assert nib.load(earlier).shape == SHAPE


def test_no_cases_and_masks_cut_off_by_the_frame_fail(tmp_path):
    (tmp_path / "in").mkdir()
    oracle, inferer, scheduler = _oracle_and_inferer(_target(), steps=2, jump_n_sample=1)
    with pytest.raises(RuntimeError, match="no case folders"):
        Inpainter(oracle, inferer, scheduler, _record(), tmp_path / "in", tmp_path / "out", progress=False).run()
    voided, mask = _case_arrays()
    small = _record(pad_crop_size=[32, 24, 32], image_size=[16, 12, 16])
    mask[0, 0, 0] = 1  # cropped away by the 32 x 24 x 32 frame
    with pytest.raises(ValueError, match="mask voxel.* outside the model's pad/crop frame"):
        inpaint_volume(oracle, inferer, voided, mask, small, scheduler=scheduler, affine=_oblique_affine())


@pytest.mark.slow
@pytest.mark.parametrize(
    "configs, ckpt_args",
    [(["train.json", "demo.json"], ["--ckpt_path", "{bundle}/models/model.pt"]), (INPAINT_CONFIGS, [])],
    ids=["repaint", "conditional"],
)
def test_config_runs_end_to_end(tmp_path, configs, ckpt_args):
    """configs/inference_inpaint.json with a WDM model (RePaint) or, by default, the conditional inpainting model."""
    data, bundle = tmp_path / "data", tmp_path / "bundle"
    make_inpainting_dataset(data, num_cases=2, num_test=1, size=32, progress=False)
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / c) for c in configs])
    parser.update({"dataset_dir": str(data), "bundle_root": str(bundle)})
    net = parser.get_parsed_content("network_def")
    state = {k: torch.randn_like(v) * 0.05 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    record = parser.get_parsed_content("record")
    ckpt = Path(parser.get_parsed_content("ckpt_dir")) / "model.pt"
    ckpt.parent.mkdir(parents=True)
    atomic_save({"model": state, "ema": state, "iteration": 2, "record": record}, ckpt)
    args = ["--config_file", "configs/inference_inpaint.json", "--input_dir", str(data)]
    args += ["--bundle_root", str(bundle), "--sampler", "ddim", "--num_inference_steps", "3"]
    args += ["--jump_length", "1", "--jump_n_sample", "2", "--progress", "false"]
    args += [a.format(bundle=bundle) for a in ckpt_args]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case in sorted(p.name for p in data.iterdir() if p.is_dir()):
        ref = nib.load(data / case / f"{case}-t1n-voided.nii.gz")
        out = nib.load(tmp_path / "bundle" / "inpainting" / f"{case}-t1n-inference.nii.gz")
        np.testing.assert_array_equal(out.affine, ref.affine)
        mask = nib.load(data / case / f"{case}-mask.nii.gz").get_fdata() == 1
        data_out, voided = out.get_fdata(dtype=np.float32), ref.get_fdata(dtype=np.float32)
        assert out.shape == ref.shape and np.array_equal(data_out[~mask], voided[~mask])
        assert np.isfinite(data_out).all()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["generation", "inpainting"])
def test_brats_sized_oblique_case_round_trips(tmp_path, task):
    """A BraTS-sized case (240 x 240 x 155, axes flipped and 12 degrees oblique) through `Inpainter`: the output has
    the input's shape, affine and header, the input's voxels outside the mask bit for bit, and inside it the model's
    values in the input's units (within the voided image's clip range)."""
    shape = (240, 240, 155)
    angle = np.deg2rad(12)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0])  # LPS-like storage, as BraTS files
    affine[:3, 3] = [119.5, 119.5, -77.0]
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = ((grid / np.array([0.8, 0.9, 0.8])[:, None, None, None]) ** 2).sum(0) < 1
    rng = np.random.default_rng(0)
    image = np.where(brain, 300 + 200 * grid[0] + rng.normal(0, 20, shape), 0).astype(np.float32)
    mask = (((grid - np.array([0.2, -0.1, 0.1])[:, None, None, None]) / 0.15) ** 2).sum(0) < 1
    root, out_dir = tmp_path / "in", tmp_path / "out"
    _save(root / "case" / "case-t1n-voided.nii.gz", np.where(mask, 0, image).astype(np.float32), affine)
    _save(root / "case" / "case-mask.nii.gz", mask.astype(np.uint8), affine)

    record = _record(task=task, pad_crop_size=[240, 240, 160], image_size=[48, 48, 32])
    scheduler = make_scheduler("ddim", 2)
    inferer = inpainting_inferer(record, scheduler, 1, 1)
    oracle = ConditionedOracle(None)
    target = torch.rand(1, 1, 48, 48, 32, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    oracle.target = oracle.wavelet.encode(target)
    results = Inpainter(oracle, inferer, scheduler, record, root, out_dir, progress=False).run()
    assert [r.status for r in results] == ["ok"]

    ref = nib.load(root / "case" / "case-t1n-voided.nii.gz")
    out = nib.load(out_dir / "case-t1n-inference.nii.gz")
    assert out.shape == shape and out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert out.header["descrip"] == ref.header["descrip"]
    assert out.get_qform(coded=True)[1] == ref.get_qform(coded=True)[1]
    assert out.get_sform(coded=True)[1] == ref.get_sform(coded=True)[1]
    data, voided = out.get_fdata(dtype=np.float32), ref.get_fdata(dtype=np.float32)
    assert np.array_equal(data[~mask], voided[~mask])
    p_lo, p_hi = np.percentile(voided, record["clip_percentiles"])
    inside = data[mask]
    assert np.isfinite(inside).all() and inside.min() >= p_lo - 1e-3 and inside.max() <= p_hi + 1e-3
    assert inside.std() > 0.05 * (p_hi - p_lo)  # the oracle's random tissue, not a constant
