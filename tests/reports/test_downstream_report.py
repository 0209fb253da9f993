"""Tests of wdm_bundle.reports.downstream.evaluate_downstream on tiny oblique, odd-size cases with a stand-in segmenter.

The stand-in segmenter reads tumour labels from intensities: every contrast holds brain 0.25, SNFH 0.5, NCR 0.75 and
ET 1.0 (times a per-contrast scale), which percentile normalisation over the brain maps to 0, 1/3, 2/3, 1; each
contrast gives a level per voxel (relative to its maximum) and the labels come from the lowest level over the
contrasts, so a zero contrast gives no tumour and a perfect one the reference exactly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from workflow_helpers import error_messages, run_workflow

from wdm_bundle.data.io import CONTRASTS
from wdm_bundle.data.pseudo_validation import make_pseudo_validation
from wdm_bundle.metrics.segmentation import HD95_EMPTY, REGIONS, brats_region_metrics
from wdm_bundle.reports.downstream import VARIANTS, evaluate_downstream

SHAPE = (23, 21, 19)  # odd sizes
SCALES = {"t1n": 300.0, "t1c": 1000.0, "t2w": 2.0, "t2f": 50.0}
LEVEL_OF_LABEL = np.array([0, 2, 1, 3])  # label 0/1/2/3 (bg, NCR, SNFH, ET) -> intensity level 0/2/1/3
LABEL_OF_LEVEL = np.array([0, 2, 1, 3])


def _affine() -> np.ndarray:
    """Oblique: rotated 20 degrees about the last axis, unit voxels, shifted origin."""
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, (-11.0, 7.0, 3.5)
    return out


class LevelSegmenter:
    """Stand-in for `wdm_bundle.engines.segmentation.Segmenter` (same interface), exact on the fixtures."""

    contrasts = list(CONTRASTS)

    def __init__(self):
        self.affines = []

    def segment(self, volumes, affine):
        self.affines.append(np.asarray(affine))
        levels = []
        for c in self.contrasts:
            v = np.asarray(volumes[c], np.float64)
            rel = v / v.max() if v.max() > 0 else v
            levels.append(np.digitize(rel, [0.3, 0.6, 0.9]))
        return LABEL_OF_LEVEL[np.min(levels, axis=0)].astype(np.uint8)


def _labels(rng, centre_shift=0) -> np.ndarray:
    grid = np.indices(SHAPE)
    centre = np.array(SHAPE) // 2 + rng.integers(-2, 3, 3) + centre_shift
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    labels = np.zeros(SHAPE, np.uint8)
    labels[dist < 5] = 2
    labels[dist < 3.5] = 1
    labels[dist < 2] = 3
    return labels


def _contrast(labels: np.ndarray, brain: np.ndarray, contrast: str) -> np.ndarray:
    intensity = np.where(brain, 0.25 + 0.25 * LEVEL_OF_LABEL[labels], 0.0)
    return (intensity * SCALES[contrast]).astype(np.float32)


def _save(array: np.ndarray, path: Path, affine=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, _affine() if affine is None else affine), str(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2 training + 4 test cases; the test ones made a pseudo-validation set (keep_seg=True)."""
    root = tmp_path_factory.mktemp("downstream")
    rng = np.random.default_rng(0)
    brain = np.sqrt(sum((g - s // 2) ** 2 for g, s in zip(np.indices(SHAPE), SHAPE))) < 9
    entries, labels = [], {}
    for i in range(6):
        case = f"BraTS-DS-{i:05d}-000"
        labels[case] = _labels(rng)
        entry = {"case": case, "seg": f"{case}/{case}-seg.nii.gz"}
        _save(labels[case], root / "data" / entry["seg"])
        for c in CONTRASTS:
            entry[c] = f"{case}/{case}-{c}.nii.gz"
            _save(_contrast(labels[case], brain, c), root / "data" / entry[c])
        entries.append(entry)
    datalist = root / "data" / "datalist.json"
    datalist.write_text(json.dumps({"training": entries[:2], "test": entries[2:]}))
    kw = dict(datalist=str(datalist), split="test", keep_seg=True, seed=0)
    missing = make_pseudo_validation(None, root / "pv", root / "gt", **kw)
    cases = sorted(missing)
    # predictions: perfect, shifted by 2 voxels, none (failure), perfect with a mis-registered seg (failure)
    (root / "pred").mkdir()
    for case, how in zip(cases, ("perfect", "shifted", "none", "bad_affine")):
        gt_img = nib.load(str(root / "gt" / case / f"{case}-{missing[case]}.nii.gz"))
        gt = np.asarray(gt_img.dataobj)
        if how == "shifted":
            gt = _contrast(np.roll(labels[case], 2, axis=0), brain, missing[case])
        if how != "none":
            _save(gt, root / "pred" / f"{case}-{missing[case]}.nii.gz")
        if how == "bad_affine":
            shifted = _affine()
            shifted[0, 3] += 5.0
            _save(labels[case], root / "pv" / case / f"{case}-seg.nii.gz", shifted)
    return {"root": root, "datalist": str(datalist), "missing": missing, "cases": cases, "labels": labels}


def _expected_shifted(ref: np.ndarray) -> np.ndarray:
    """The stand-in's labels when the missing contrast is ``ref``'s tumour rolled by 2 voxels along axis 0."""
    levels = np.minimum(LEVEL_OF_LABEL[ref], LEVEL_OF_LABEL[np.roll(ref, 2, axis=0)])
    return LABEL_OF_LEVEL[levels]


@pytest.mark.slow
def test_end_to_end(data, tmp_path):
    root, (perfect, shifted, no_pred, bad_affine) = data["root"], data["cases"]
    segmenter = LevelSegmenter()
    result = evaluate_downstream(
        root / "pv", root / "gt", root / "pred", segmenter, data["datalist"], tmp_path / "out", progress=False
    )
    assert result["num_cases"] == 2 and result["backend"] in ("panoptica", "monai")
    assert {f["case"]: f["reason"] for f in result["failures"]}.keys() == {no_pred, bad_affine}
    reasons = {f["case"]: f["reason"] for f in result["failures"]}
    assert "no prediction" in reasons[no_pred] and "affine" in reasons[bad_affine]
    assert all(np.allclose(a, _affine()) for a in segmenter.affines)
    by = {(r["case"], r["variant"], r["region"]): r for r in result["per_case"]}
    assert len(by) == 2 * len(VARIANTS) * 3
    for case in (perfect, shifted):
        assert {r["missing"] for r in result["per_case"] if r["case"] == case} == {data["missing"][case]}
        for region in REGIONS:
            assert (by[case, "real", region]["dice"], by[case, "real", region]["hd95"]) == (1.0, 0.0)
            assert (by[case, "zeros", region]["dice"], by[case, "zeros", region]["hd95"]) == (0.0, HD95_EMPTY)
        assert by[case, "real", "ET"]["ssim_tumour"] == pytest.approx(1.0, abs=1e-6)
        assert by[case, "real", "ET"]["ssim_healthy"] == pytest.approx(1.0, abs=1e-6)
        assert by[case, "zeros", "ET"]["ssim_tumour"] < 0.5
        for variant in ("hist_match", "oracle_hist_match", "mean_target"):
            assert 0.0 <= by[case, variant, "WT"]["dice"] <= 1.0 and np.isfinite(by[case, variant, "WT"]["hd95"])
    ref = data["labels"][shifted]
    expected = brats_region_metrics(_expected_shifted(ref), ref, backend=result["backend"])
    for region in REGIONS:
        assert by[perfect, "synthesis", region]["dice"] == 1.0
        assert by[shifted, "synthesis", region]["dice"] == pytest.approx(expected[region]["dice"], abs=1e-12)
        assert by[shifted, "synthesis", region]["hd95"] == pytest.approx(expected[region]["hd95"], abs=1e-9)
        assert 0.0 < expected[region]["dice"] < 1.0
    # the summary: real beside synthesis and their gap (mean over the two cases)
    gap = result["gap_real_minus_synthesis"]["all"]["WT"]["dice"]["mean"]
    assert gap == pytest.approx((1.0 - expected["WT"]["dice"]) / 2)
    assert result["variants"]["real"]["all"]["ET"]["dice"] == {"mean": 1.0, "std": 0.0}
    out = tmp_path / "out"
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and set(rows[0]) >= {"case", "missing", "variant", "region", "dice", "hd95"}
    assert json.loads((out / "summary.json").read_text())["num_cases"] == 2
    md = (out / "summary.md").read_text()
    assert "real − synthesis" in md and no_pred in md and result["backend"] in md
    assert sorted(p.name for p in (out / "pictures").iterdir()) == [f"{perfect}.png", f"{shifted}.png"]


def test_no_case_scored_raises(data, tmp_path):
    root = data["root"]
    (tmp_path / "empty_pred").mkdir()
    with pytest.raises(ValueError, match="no case of gt_dir") as err:
        evaluate_downstream(
            root / "pv", root / "gt", tmp_path / "empty_pred", LevelSegmenter(), data["datalist"], progress=False
        )
    assert str(tmp_path / "empty_pred") in str(err.value) and "seg_dir" in str(err.value)
    assert not (tmp_path / "empty_pred" / "downstream").exists()


def test_bad_arguments(data, tmp_path):
    root = data["root"]
    args = (root / "pv", root / "gt", root / "pred")
    with pytest.raises(FileNotFoundError, match="seg_ckpt"):
        evaluate_downstream(*args, tmp_path / "missing.pt", data["datalist"])
    with pytest.raises(ValueError, match="variants"):
        evaluate_downstream(*args, LevelSegmenter(), data["datalist"], variants=["real", "noise"])
    with pytest.raises(FileNotFoundError, match="seg_dir"):
        evaluate_downstream(*args, LevelSegmenter(), data["datalist"], seg_dir=tmp_path / "nowhere")


@pytest.mark.slow
def test_bundle_config(data, tmp_path, repo_root):
    """`python -m monai.bundle run evaluate --config_file configs/evaluate_downstream.json ...` as a ConfigWorkflow."""
    root = data["root"]
    kw = dict(input_dir=str(root / "pv"), gt_dir=str(root / "gt"), pred_dir=str(root / "pred"))
    kw.update(train_datalist=data["datalist"], seg_ckpt=LevelSegmenter(), progress=False, pictures=False)
    run_workflow(
        repo_root,
        ["evaluate_downstream.json"],
        "infer",
        run_id="evaluate",
        variants=["real", "synthesis", "zeros"],
        **kw,
    )
    summary = json.loads((root / "pred" / "downstream" / "summary.json").read_text())
    assert list(summary["variants"]) == ["real", "synthesis", "zeros"] and summary["num_cases"] == 2
    assert summary["variants"]["zeros"]["all"]["WT"]["dice"]["mean"] == 0.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception) as err:
        run_workflow(
            repo_root,
            ["evaluate_downstream.json"],
            "infer",
            run_id="evaluate",
            **{**kw, "pred_dir": str(tmp_path / "empty")},
        )
    assert "no case of gt_dir" in error_messages(err.value)


@pytest.mark.slow
def test_with_a_segmentation_checkpoint(data, tmp_path):
    """A real (untrained, tiny) `load_segmenter` checkpoint: the report runs and scores every variant."""
    import torch

    from wdm_bundle.engines.segmentation import build_segmenter, segmentation_record

    net = build_segmenter(init_filters=8, blocks_down=(1, 1), blocks_up=(1,), norm_num_groups=4)
    record = segmentation_record(net, list(CONTRASTS), (0.1, 99.9), (24, 24, 24))  # one window per case
    torch.save({"model": net.state_dict(), "record": record}, tmp_path / "seg.pt")
    root = data["root"]
    result = evaluate_downstream(
        root / "pv",
        root / "gt",
        root / "pred",
        tmp_path / "seg.pt",
        data["datalist"],
        tmp_path / "out",
        variants=["real", "zeros"],
        pictures=False,
        progress=False,
    )
    assert result["num_cases"] == 2 and result["segmenter_contrasts"] == list(CONTRASTS)
    assert all(0.0 <= r["dice"] <= 1.0 and 0.0 <= r["hd95"] <= HD95_EMPTY for r in result["per_case"])


@pytest.mark.parametrize("where", ["inside", "border", "small"])
def test_cropped_ssim_equals_whole_volume(where):
    from wdm_bundle.metrics.paired import paired_metrics
    from wdm_bundle.reports.downstream import _ssim_in

    rng = np.random.default_rng(1)
    a, b = rng.random((30, 27, 25)), rng.random((30, 27, 25))
    b = 0.6 * a + 0.4 * b  # correlated, so SSIM is far from 0
    mask = np.zeros(a.shape, bool)
    box = {"inside": np.s_[8:20, 9:15, 6:19], "border": np.s_[0:9, 20:27, 3:10], "small": np.s_[14, 12, 11:13]}[where]
    mask[box] = True
    assert _ssim_in(a, b, mask) == pytest.approx(paired_metrics(a, b, mask)["ssim_mask"], abs=1e-12)
