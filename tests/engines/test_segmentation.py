"""The segmenter: its record (validated key by key), loading from model.pt, and labels on the input's own grid."""

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from wdm_bundle.data.segmentation_transforms import labels_to_regions
from wdm_bundle.engines import atomic_save, validate_record
from wdm_bundle.engines.segmentation import (
    BratsSegResNet,
    CosineAnnealing,
    Segmenter,
    build_segmenter,
    load_segmenter,
    segmentation_record,
    validate_segmentation_record,
)

CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]
TINY = dict(init_filters=4, norm_num_groups=4, blocks_down=(1, 1, 1), blocks_up=(1, 1))


def _record(**kw):
    args = dict(network=build_segmenter(**TINY), contrasts=CONTRASTS, clip_percentiles=(0, 100), roi_size=(16, 16, 16))
    return segmentation_record(**{**args, **kw})


class Oracle(nn.Module):
    """Outputs the regions of the labels 0..3 stored in its first input channel (normalised to [0, 1])."""

    def forward(self, x):
        labels = torch.round(x[:, 0] * 3)
        return torch.stack([labels_to_regions(s) for s in labels]) * 20 - 10


def _oblique_affine():
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    perm_flip = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]])  # voxel axes: (A, I, L)-ish
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm_flip @ np.diag([1.2, 0.9, 1.5])
    affine[:3, 3] = [10, -20, 5]
    return affine


def _oracle_case(shape, seed=0):
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.uint8)
    centre = np.array(shape) // 2
    grid = np.indices(shape).transpose(1, 2, 3, 0) - centre
    dist = np.linalg.norm(grid / (np.array(shape) / 4), axis=-1)
    seg[dist < 1.0], seg[dist < 0.6], seg[dist < 0.3] = 2, 1, 3
    seg[rng.random(shape) < 0.01] = 3  # scattered: orientation mistakes would move them
    volumes = {c: (seg.astype(np.float32) if c == "t1n" else rng.random(shape, dtype=np.float32)) for c in CONTRASTS}
    return volumes, seg


def test_record_round_trip_and_network():
    record = _record()
    assert record["task"] == "segmentation" and record["version"] == 1
    assert record["regions"] == ["TC", "WT", "ET"] and record["labels"] == [1, 2, 3]
    assert set(record["network"]) == {
        "spatial_dims",
        "in_channels",
        "out_channels",
        "init_filters",
        "blocks_down",
        "blocks_up",
        "dropout_prob",
        "norm_num_groups",
    }
    assert validate_segmentation_record(record) == record
    net = build_segmenter(**record["network"])
    assert isinstance(net, BratsSegResNet) and net.config == record["network"] and net.size_multiple == 4
    assert net(torch.zeros(1, 4, 8, 8, 8)).shape == (1, 3, 8, 8, 8)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"task": "generation"}, "not a segmentation model"),
        ({"version": 99}, "newer"),
        ({"contrasts": ["t1n", "t1n", "t2w", "t2f"]}, "distinct"),
        ({"contrasts": ["t1n", "t1c", "../x", "t2f"]}, "contrasts"),
        ({"clip_percentiles": [99, 1]}, "clip_percentiles"),
        ({"roi_size": [16, 16]}, "roi_size"),
        ({"roi_size": [16, 16, 18]}, "multiples of 4"),
        ({"orientation": "XYZ"}, "orientation"),
        ({"regions": ["WT", "TC", "ET"]}, "regions"),
        ({"labels": [1, 2]}, "labels"),
        ({"labels": [1, 2, 0]}, "labels"),
        ({"unexpected": 1}, "unknown keys"),
        ({"network": {"init_filters": 4}}, "missing"),
        ({"network#in_channels": 3}, "in_channels"),
        ({"network#init_filters": 6}, "multiple of norm_num_groups"),
        ({"network#blocks_up": [1]}, "blocks_up"),
        ({"network#dropout_prob": 1.5}, "dropout_prob"),
        ({"network#spatial_dims": 2}, "spatial_dims"),
        ({"network#act": "PRELU"}, "unknown"),
    ],
)
def test_record_refuses_bad_values(change, match):
    record = _record()
    record["network"] = dict(record["network"])
    for key, value in change.items():
        if key.startswith("network#"):
            record["network"][key.split("#")[1]] = value
        else:
            record[key] = value
    with pytest.raises(ValueError, match=match) as e:
        validate_segmentation_record(record, "model 'x.pt'")
    assert "model 'x.pt'" in str(e.value)


def test_diffusion_validator_refuses_a_segmentation_record():
    with pytest.raises(ValueError, match="segmentation model"):
        validate_record(_record(), "s.pt")


def test_segment_oracle_on_an_oblique_permuted_odd_grid():
    volumes, seg = _oracle_case((37, 41, 29))
    segmenter = Segmenter(Oracle(), _record())
    labels = segmenter.segment(volumes, _oblique_affine())
    assert labels.dtype == np.uint8 and labels.shape == (37, 41, 29)
    assert np.array_equal(labels, seg)


def test_segment_brats_grid():
    volumes, seg = _oracle_case((240, 240, 155))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # BraTS files are LPS
    labels = Segmenter(Oracle(), _record(roi_size=(128, 128, 128)), overlap=0.25).segment(volumes, affine)
    assert labels.shape == (240, 240, 155) and np.array_equal(labels, seg)


def test_segment_reorients_like_training():
    """The same physical image stored in another voxel order gets the same physical labels (a random SegResNet is
    not flip- or permutation-equivariant, so a missed reorientation would change them)."""
    torch.manual_seed(0)
    net = build_segmenter(**TINY)
    segmenter = Segmenter(net, _record(clip_percentiles=(0.1, 99.9)))
    rng = np.random.default_rng(0)
    shape = (20, 24, 18)
    ras = nib.Nifti1Image(rng.random((4, *shape), dtype=np.float32).transpose(1, 2, 3, 0), np.diag([1.2, 1, 1.5, 1]))
    expected = segmenter.segment({c: ras.dataobj[..., i] for i, c in enumerate(CONTRASTS)}, ras.affine)
    assert 0 < (expected > 0).mean() < 1
    ornt = np.array([[2, -1], [0, 1], [1, -1]])  # voxel axes: (S flipped, R, A flipped)
    other = ras.as_reoriented(ornt)
    labels = segmenter.segment({c: np.asarray(other.dataobj[..., i]) for i, c in enumerate(CONTRASTS)}, other.affine)
    assert np.array_equal(labels, nib.orientations.apply_orientation(expected, ornt))
    # the check has teeth: the network itself is not flip-equivariant
    x = torch.rand(1, 4, 16, 16, 16)
    with torch.no_grad():
        assert not torch.equal(net(x.flip(2)) > 0, (net(x) > 0).flip(2))


def test_segment_refuses_bad_inputs():
    segmenter = Segmenter(Oracle(), _record())
    volumes, _ = _oracle_case((16, 16, 16))
    with pytest.raises(ValueError, match=r"\['t2f'\]"):
        segmenter.segment({c: v for c, v in volumes.items() if c != "t2f"}, np.eye(4))
    with pytest.raises(ValueError, match="t1c"):
        segmenter.segment({**volumes, "t1c": np.zeros((16, 16, 15))}, np.eye(4))
    with pytest.raises(ValueError, match="affine"):
        segmenter.segment(volumes, np.eye(3))
    with pytest.raises(ValueError, match="roi_size must be 3 multiples of 4"):
        Segmenter(Oracle(), _record(), roi_size=(16, 16, 10))


def test_segment_files(tmp_path):
    volumes, seg = _oracle_case((21, 18, 17))
    affine = _oblique_affine()
    paths = {}
    for c, v in volumes.items():
        paths[c] = tmp_path / f"case-{c}.nii.gz"
        nib.save(nib.Nifti1Image(v, affine), paths[c])
    segmenter = Segmenter(Oracle(), _record())
    labels, reference = segmenter.segment_files(paths)
    assert np.array_equal(labels, seg) and np.allclose(reference.affine, affine) and reference.shape == seg.shape
    nib.save(nib.Nifti1Image(volumes["t2w"], np.eye(4)), paths["t2w"])
    with pytest.raises(ValueError, match="case-t2w.nii.gz.*not on the grid"):
        segmenter.segment_files(paths)


def test_load_segmenter(tmp_path):
    record = _record()
    net = build_segmenter(**record["network"])
    path = tmp_path / "model.pt"
    atomic_save({"model": net.state_dict(), "iteration": 3, "diffusion": "ddpm", "record": record}, path)
    segmenter = load_segmenter(path, roi_size=(8, 8, 8))
    assert segmenter.contrasts == CONTRASTS and segmenter.record == record
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), segmenter.network.state_dict().values()))
    volumes, _ = _oracle_case((12, 10, 9))
    assert segmenter.segment(volumes, np.eye(4)).shape == (12, 10, 9)


def test_load_segmenter_refuses_other_files(tmp_path):
    net = build_segmenter(**TINY)
    diffusion = tmp_path / "wdm.pt"
    atomic_save({"model": net.state_dict(), "record": {"task": "generation", "diffusion": "ddpm"}}, diffusion)
    with pytest.raises(ValueError, match=r"wdm.pt.*not a segmentation model.*'generation'"):
        load_segmenter(diffusion)
    bare = tmp_path / "bare.pt"
    atomic_save(net.state_dict(), bare)
    with pytest.raises(ValueError, match=r"bare.pt.*no training record"):
        load_segmenter(bare)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_segmenter(tmp_path / "missing.pt")


def test_cosine_annealing_is_a_function_of_the_iteration():
    from ignite.engine import Engine

    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = CosineAnnealing(optimizer, num_iterations=10, eta_min=1e-5)
    engine = Engine(lambda e, b: None)
    lrs = []
    for iteration in (1, 6, 11, 50):
        engine.state.iteration = iteration
        schedule(engine)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx((1e-3 + 1e-5) / 2)
    assert lrs[2] == pytest.approx(1e-5) and lrs[3] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="num_iterations"):
        CosineAnnealing(optimizer, 0)
