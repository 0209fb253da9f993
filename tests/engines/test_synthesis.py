"""ContrastSynthesizer on BraTS-sized cases: geometry, per-case errors, nothing lost."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRangePercentiles
from oracles import ConditionEcho

from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler
from wdm_bundle.engines import LEGACY_RECORDS, ContrastSynthesizer, atomic_save, synthesize, validate_record
from wdm_bundle.networks import WaveletDiffusionUNet

CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]
SMALL = dict(channels=[8, 8], num_res_blocks=1, norm_num_groups=8)


def _record(pad_crop_size=(224, 224, 160), unified=True, **kw):
    """A validated cWDM training record with a small network."""
    base = LEGACY_RECORDS["synthesis"]
    channels = (
        {"condition_channels": 4, "extra_channels": 4} if unified else {"condition_channels": 3, "extra_channels": 0}
    )
    network = {**base["network"], **SMALL, **channels}
    roi = list(pad_crop_size) if pad_crop_size else None
    return validate_record({**base, "pad_crop_size": roi, "image_size": roi, "network": network, **kw})


def _oblique_affine():
    angle = np.deg2rad(12)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.94, 0.94, 1.2])
    affine[:3, 3] = [-112.0, -130.5, -75.25]
    return affine


def _case(root, name, contrasts, shape=(240, 240, 155), affine=None, shapes=None):
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    for c in contrasts:
        s = (shapes or {}).get(c, shape)
        data = np.zeros(s, np.float32)
        m = [n // 8 for n in s]
        inner = tuple(slice(k, n - k) for k, n in zip(m, s))
        data[inner] = rng.random([n - 2 * k for k, n in zip(m, s)]) * 500
        nib.save(
            nib.Nifti1Image(data, affine if affine is not None else _oblique_affine()), str(d / f"{name}-{c}.nii.gz")
        )
    return d


def _synthesizer(tmp_path, input_dir, pad_crop_size=(224, 224, 160), **kw):
    record = _record(pad_crop_size)
    ckpt = tmp_path / "model.pt"
    if not ckpt.exists():
        atomic_save({"model": WaveletDiffusionUNet.from_config(record["network"]).state_dict(), "record": record}, ckpt)
    args = dict(
        record=record,
        inferer=WaveletDiffusionInferer(make_scheduler("ddim", 1), (0, 1)),
        scheduler=make_scheduler("ddim", 1),
        input_dir=input_dir,
        output_dir=tmp_path / "out",
        ckpt_path=ckpt,
        use_ema=False,
        save_png=False,
        progress=False,
    )
    args.update(kw)
    return ContrastSynthesizer(**args)


@pytest.mark.slow
def test_output_has_the_input_geometry(tmp_path):
    _case(tmp_path / "in", "BraTS-GLI-00001-000", ["t1n", "t1c", "t2f"])
    results = _synthesizer(tmp_path, tmp_path / "in").run()
    assert [(r.case, r.status, r.missing) for r in results] == [("BraTS-GLI-00001-000", "ok", "t2w")]
    ref = nib.load(tmp_path / "in" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz")
    out = nib.load(tmp_path / "out" / "BraTS-GLI-00001-000-t2w.nii.gz")
    assert out.shape == ref.shape == (240, 240, 155)
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(out.header.get_zooms(), ref.header.get_zooms(), atol=1e-6)
    assert (
        out.get_qform(coded=True)[1] == ref.get_qform(coded=True)[1]
        and out.get_sform(coded=True)[1] == ref.get_sform(coded=True)[1]
    )
    data = out.get_fdata()
    assert out.get_data_dtype() == np.float32 and data.min() >= 0 and data.max() <= 1
    background = ref.get_fdata() == 0
    assert data[background].max() == 0  # zeroed where all inputs are zero
    summary = json.loads((tmp_path / "out" / "synthesis_summary.json").read_text())
    assert summary["num_ok"] == 1 and summary["num_failed"] == 0


def test_bad_cases_are_reported_and_skipped(tmp_path):
    root = tmp_path / "in"
    shape = (32, 32, 24)
    _case(root, "a_good", ["t1n", "t1c", "t2w"], shape=shape)
    _case(root, "b_complete", CONTRASTS, shape=shape)
    _case(root, "c_two_missing", ["t1n", "t2w"], shape=shape)
    _case(root, "d_shapes", ["t1n", "t1c", "t2w"], shape=shape, shapes={"t1c": (32, 32, 20)})
    bad = _case(root, "e_unreadable", ["t1n", "t1c", "t2f"], shape=shape)
    (bad / "e_unreadable-t1c.nii.gz").write_bytes(b"garbage")
    (root / "f_empty").mkdir()
    (tmp_path / "out").mkdir()
    earlier = tmp_path / "out" / "earlier-t1n.nii.gz"
    earlier.write_bytes(b"an earlier result")

    synth = _synthesizer(tmp_path, root, pad_crop_size=None)
    with pytest.raises(RuntimeError, match="5 of 6 case") as err:
        synth.run()
    msg = str(err.value)
    assert "b_complete: no contrast is missing" in msg
    assert "c_two_missing: 2 contrasts are missing (t1c, t2f)" in msg
    assert "d_shapes: inputs have different shapes: t1n (32, 32, 24), t1c (32, 32, 20)" in msg
    assert "e_unreadable-t1c.nii.gz: cannot be read" in msg
    assert "f_empty: 4 contrasts are missing" in msg
    good = tmp_path / "out" / "a_good-t2f.nii.gz"
    assert nib.load(good).shape == shape
    assert earlier.read_bytes() == b"an earlier result"

    # a rerun keeps what exists, redoes nothing, and still reports the bad cases
    before = good.read_bytes()
    with pytest.raises(RuntimeError, match="5 of 6"):
        _synthesizer(tmp_path, root, pad_crop_size=None).run()
    assert good.read_bytes() == before
    summary = json.loads((tmp_path / "out" / "synthesis_summary.json").read_text())
    assert summary["num_kept"] == 1


def test_missing_or_empty_input_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _synthesizer(tmp_path, tmp_path / "nope").run()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no case folders"):
        _synthesizer(tmp_path, tmp_path / "empty").run()


def test_missing_unified_weights_fail_before_any_case(tmp_path):
    _case(tmp_path / "in", "x", ["t1n", "t1c", "t2w"], shape=(16, 16, 16))
    with pytest.raises(FileNotFoundError, match="unified model weights"):
        _synthesizer(tmp_path, tmp_path / "in", ckpt_path=tmp_path / "none.pt", pad_crop_size=None).run()
    assert not (tmp_path / "out").exists()


def test_per_contrast_models_need_their_weights(tmp_path):
    _case(tmp_path / "in", "x", ["t1n", "t1c", "t2w"], shape=(16, 16, 16))
    with pytest.raises(RuntimeError, match="no model for target 't2f'"):
        _synthesizer(tmp_path, tmp_path / "in", ckpt_paths={"t1n": "a.pt"}, pad_crop_size=None).run()


IDENTITY_CASES = {  # name: (input shape, pad_crop_size, placement, data_range)
    "brats_reference_framing": ((240, 240, 155), (224, 224, 160), "end", (0.0, 1.0)),
    "brats_symmetric": ((240, 240, 155), (224, 224, 160), "symmetric", (0.0, 1.0)),
    "odd_crop_and_pads_end": ((37, 41, 29), (32, 44, 32), "end", (-1.0, 1.0)),
    "odd_crop_and_pads_symmetric": ((37, 41, 29), (32, 44, 32), "symmetric", (0.0, 1.0)),
    "odd_no_roi_pad_to_multiple": ((37, 41, 29), None, "symmetric", (0.0, 1.0)),
}


@pytest.mark.parametrize("name", list(IDENTITY_CASES))
def test_identity_oracle_output_is_the_normalised_input_on_the_input_grid(tmp_path, name):
    """A network that returns the t1c condition it was given, through the real synthesis path: the written t2w
    equals the normalised t1c voxel for voxel, with the input's affine and header (no shift on any axis)."""
    shape, roi, placement, data_range = IDENTITY_CASES[name]
    affine = _oblique_affine()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1.0, 1.1, 2.5])  # anisotropic too
    _case(tmp_path / "in", "BraTS-GLI-00007-000", ["t1n", "t1c", "t2f"], shape=shape, affine=affine)
    record = _record(roi, placement=placement, data_range=list(data_range))
    oracle = ConditionEcho(source=CONTRASTS.index("t1c"), multiple=4)  # no ROI: 37, 41, 29 -> 40, 44, 32
    atomic_save({"model": oracle.state_dict(), "record": record}, tmp_path / "model.pt")
    inferer = WaveletDiffusionInferer(make_scheduler("ddim", 2), data_range)
    synth = _synthesizer(
        tmp_path,
        tmp_path / "in",
        pad_crop_size=roi,
        record=record,
        inferer=inferer,
        scheduler=inferer.scheduler,
        network_factory=lambda record: oracle,
    )
    assert [r.status for r in synth.run()] == ["ok"]

    folder = tmp_path / "in" / "BraTS-GLI-00007-000"
    inputs = {c: nib.load(folder / f"BraTS-GLI-00007-000-{c}.nii.gz") for c in ("t1n", "t1c", "t2f")}
    expected = ScaleIntensityRangePercentiles(0.1, 99.9, 0.0, 1.0, clip=True)(
        torch.from_numpy(inputs["t1c"].get_fdata(dtype=np.float32))[None]
    )[0].numpy()
    expected[np.all([im.get_fdata() == 0 for im in inputs.values()], axis=0)] = 0
    out = nib.load(tmp_path / "out" / "BraTS-GLI-00007-000-t2w.nii.gz")
    data = out.get_fdata(dtype=np.float32)
    assert data.shape == shape
    np.testing.assert_array_equal(out.affine, inputs["t1c"].affine)
    np.testing.assert_allclose(out.header.get_zooms(), inputs["t1c"].header.get_zooms())
    assert np.abs(data - expected).max() <= 1e-6, np.abs(data - expected).max()
    for axis in range(3):  # a one-voxel shift on any axis would be far outside that tolerance
        assert np.abs(np.roll(expected, 1, axis=axis) - expected).max() > 0.5


def _case_volumes(shape, contrasts, seed=3):
    """Raw (D, H, W) volumes of one case with a zero (background) border."""
    rng = np.random.default_rng(seed)
    volumes = {}
    for c in contrasts:
        v = np.zeros(shape, np.float32)
        v[3:-3, 2:-4, 1:-2] = rng.random((shape[0] - 6, shape[1] - 6, shape[2] - 3)) * 400
        volumes[c] = v
    return volumes


def test_synthesize_returns_the_identity_oracles_condition_on_an_odd_input_grid():
    """`synthesize` on in-memory volumes: an odd shape cropped on one axis and padded on the others comes back
    on the input grid, voxel for voxel (the normalised t1c the oracle echoes), background zero."""
    shape, roi = (37, 41, 29), (32, 44, 32)
    record = _record(roi, placement="symmetric", data_range=[-1.0, 1.0])
    volumes = _case_volumes(shape, ["t1n", "t1c", "t2f"])
    oracle = ConditionEcho(source=CONTRASTS.index("t1c"), multiple=4)
    inferer = WaveletDiffusionInferer(make_scheduler("ddim", 2), (-1.0, 1.0))
    out = synthesize(oracle, inferer, volumes, "t2w", record, seed=0, case="odd")
    assert out.shape == shape and out.dtype == np.float32
    expected = ScaleIntensityRangePercentiles(0.1, 99.9, 0.0, 1.0, clip=True)(torch.from_numpy(volumes["t1c"])[None])[0]
    expected = expected.numpy()
    expected[np.all([v == 0 for v in volumes.values()], axis=0)] = 0
    assert np.abs(out - expected).max() <= 1e-6, np.abs(out - expected).max()
    with pytest.raises(ValueError, match="cannot synthesise 'pd'"):
        synthesize(oracle, inferer, volumes, "pd", record)
    with pytest.raises(ValueError, match="trained on"):
        synthesize(oracle, WaveletDiffusionInferer(make_scheduler("ddim", 2), (0.0, 1.0)), volumes, "t2w", record)


def test_the_runner_writes_exactly_what_synthesize_returns(tmp_path):
    shape, roi = (37, 41, 29), (32, 44, 32)
    _case(tmp_path / "in", "case_a", ["t1n", "t1c", "t2f"], shape=shape)
    record = _record(roi)
    net = WaveletDiffusionUNet.from_config(record["network"]).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights everywhere: an initialised network outputs zeros
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    atomic_save({"model": net.state_dict(), "record": record}, tmp_path / "model.pt")
    inferer = WaveletDiffusionInferer(make_scheduler("ddpm", 2), (0, 1))  # DDPM: the step noise is seeded too
    synth = _synthesizer(
        tmp_path, tmp_path / "in", pad_crop_size=roi, inferer=inferer, scheduler=inferer.scheduler, seed=5
    )
    assert [r.status for r in synth.run()] == ["ok"]
    written = nib.load(tmp_path / "out" / "case_a-t2w.nii.gz").get_fdata(dtype=np.float32)
    folder = tmp_path / "in" / "case_a"
    volumes = {c: nib.load(folder / f"case_a-{c}.nii.gz").get_fdata(dtype=np.float32) for c in ("t1n", "t1c", "t2f")}
    out = synthesize(net, inferer, volumes, "t2w", record, seed=5, case="case_a")
    np.testing.assert_array_equal(written, out)  # bit-identical
    assert out.std() > 0
    assert not np.array_equal(synthesize(net, inferer, volumes, "t2w", record, seed=5, case="case_b"), out)
    assert not np.array_equal(synthesize(net, inferer, volumes, "t2w", record, seed=6, case="case_a"), out)
