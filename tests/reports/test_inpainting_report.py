"""Tests of wdm_bundle.reports.inpainting: the BraTS inpainting challenge's metrics over a folder of tiny cases."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.metrics.inpainting_baselines import harmonic_fill, mean_fill
from wdm_bundle.reports.inpainting import (
    INPAINTING_METRIC_KEYS,
    InpaintingEvaluationError,
    challenge_metrics,
    evaluate_inpainting,
)

pytest.importorskip("inpainting.challenge_metrics_2023")

SHAPE = (12, 16, 16)  # the package's SSIM window (11) runs over the last two axes
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
CASES = ("case-a", "case-b", "case-c")


def _save(path: Path, volume: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), str(path))


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(truth, mask): a smooth positive 'brain' with a noisy texture in a zero background, a box inside it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    truth = 100 + 20 * np.sin(x / 3 + seed) + 10 * np.cos(y / 2) + 5 * z + rng.normal(0, 5, SHAPE)
    truth[:, :, :2] = 0
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:8, 5:11, 6:12] = 1
    return truth.astype(np.float32), mask


@pytest.fixture
def folders(tmp_path):
    """gt/<case>/<case>-{t1n,mask-healthy}[,-t1n-voided] and pred/<case>-t1n-inference: perfect for case-a."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i, case in enumerate(CASES):
        truth, mask = _case(i)
        _save(gt / case / f"{case}-t1n.nii.gz", truth)
        _save(gt / case / f"{case}-mask-healthy.nii.gz", mask)
        if case != "case-c":  # case-c: the voided image is made from the truth
            _save(gt / case / f"{case}-t1n-voided.nii.gz", np.where(mask > 0, 0, truth).astype(np.float32))
        noise = np.random.default_rng(10 + i).normal(0, 8 * i, SHAPE).astype(np.float32)
        where = pred / case if case == "case-b" else pred  # case folder or flat
        _save(where / f"{case}-t1n-inference.nii.gz", truth + noise * mask)
    return gt, pred


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")
def test_metrics_equal_the_package(folders, capsys):
    from inpainting.challenge_metrics_2023 import compute_image_quality_metrics

    gt, pred = folders
    case = gt / "case-b"
    direct = compute_image_quality_metrics(
        str(pred / "case-b" / "case-b-t1n-inference.nii.gz"),
        str(case / "case-b-mask-healthy.nii.gz"),
        str(case / "case-b-t1n.nii.gz"),
        str(case / "case-b-t1n-voided.nii.gz"),
    )
    truth, mask = _case(1)
    prediction = nib.load(str(pred / "case-b" / "case-b-t1n-inference.nii.gz")).get_fdata().astype(np.float32)
    ours = challenge_metrics(prediction, truth, mask)  # voided made from the truth: the same image
    assert set(ours) == set(INPAINTING_METRIC_KEYS)
    for key in INPAINTING_METRIC_KEYS:
        assert ours[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9), key
    assert 0 < ours["mse"] and ours["ssim"] < 1 and np.isfinite(ours["psnr"])
    perfect = challenge_metrics(truth, truth, mask)
    assert perfect["mse"] == 0 and perfect["ssim"] == pytest.approx(1.0, abs=1e-6) and perfect["psnr"] == np.inf


def test_report_prediction_and_baselines(folders):
    gt, pred = folders
    result = evaluate_inpainting(gt, pred)
    assert result["num_cases"] == 3 and result["failures"] == []
    by = {(r["case"], r["method"]): r for r in result["per_case"]}
    assert len(by) == 9 and list(result["methods"]) == ["prediction", "mean_fill", "harmonic_fill"]
    assert by["case-a", "prediction"]["mse"] == 0 and by["case-a", "prediction"]["ssim"] == pytest.approx(1, abs=1e-6)
    assert by["case-c", "prediction"]["mse"] > by["case-b", "prediction"]["mse"] > 0
    # the rows are the package's numbers for the baselines too
    truth, mask = _case(0)
    voided = np.where(mask > 0, 0, truth)
    for name, fill in (("mean_fill", mean_fill), ("harmonic_fill", harmonic_fill)):
        expected = challenge_metrics(fill(voided, mask > 0), truth, mask)
        assert {k: by["case-a", name][k] for k in INPAINTING_METRIC_KEYS} == pytest.approx(expected)
        assert by["case-a", name]["outside_max_abs_diff"] == 0 and by["case-a", name]["mse"] > 0
    assert result["methods"]["harmonic_fill"]["mse"]["mean"] < result["methods"]["mean_fill"]["mse"]["mean"]

    with open(pred / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case", "method", *INPAINTING_METRIC_KEYS, "outside_max_abs_diff"] and len(rows) == 9
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["methods"]["prediction"]["n"] == 3 and summary["suffixes"]["mask"] == "mask-healthy"
    md = (pred / "summary.md").read_text()
    assert "| method | n | SSIM | PSNR | MSE |" in md and "| harmonic_fill | 3 |" in md
    assert sorted(p.name for p in (pred / "pictures").glob("*.png")) == [f"{c}.png" for c in CASES]


def test_bad_cases_reported_and_raise(folders, tmp_path):
    gt, pred = folders
    os.remove(pred / "case-a-t1n-inference.nii.gz")
    _save(pred / "case-b" / "case-b-t1n-inference.nii.gz", np.zeros((12, 16, 15), np.float32))
    with pytest.raises(InpaintingEvaluationError, match="2 of 3") as info:
        evaluate_inpainting(gt, pred, tmp_path / "rep")
    result = info.value.result
    assert result["num_cases"] == 1 and {r["case"] for r in result["per_case"]} == {"case-c"}
    reasons = {f["case"]: f["reason"] for f in result["failures"]}
    assert "no prediction file" in reasons["case-a"] and "shape" in reasons["case-b"]
    assert "case-a" in (tmp_path / "rep" / "summary.md").read_text()
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["failures"] == result["failures"]
    result = evaluate_inpainting(gt, pred, tmp_path / "rep2", fail_on_error=False, baselines=())
    assert len(result["failures"]) == 2 and list(result["methods"]) == ["prediction"]


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda gt, truth, mask: _save(gt / "case-a-mask-healthy.nii.gz", mask * 0), "empty"),
        (lambda gt, truth, mask: _save(gt / "case-a-mask-healthy.nii.gz", mask * 2), "not binary"),
        (lambda gt, truth, mask: _save(gt / "case-a-mask-healthy.nii.gz", mask, np.diag([2.0, 1, 1, 1])), "affine"),
        (lambda gt, truth, mask: os.remove(gt / "case-a-t1n.nii.gz"), "no truth file"),
    ],
    ids=["empty-mask", "non-binary", "affine", "no-truth"],
)
def test_bad_mask_and_files(folders, tmp_path, spoil, reason):
    gt, pred = folders
    truth, mask = _case(0)
    spoil(gt / "case-a", truth, mask)
    result = evaluate_inpainting(gt, pred, tmp_path / "rep", baselines=(), fail_on_error=False)
    (failure,) = result["failures"]
    assert failure["case"] == "case-a" and reason in failure["reason"]


def test_nothing_scored_and_baselines_only(folders, tmp_path):
    gt, _ = folders
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no case of gt_dir"):
        evaluate_inpainting(gt, tmp_path / "empty", tmp_path / "rep")
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluate_inpainting(gt, None, baselines=("median_fill",))
    result = evaluate_inpainting(gt, None)
    assert list(result["methods"]) == ["mean_fill", "harmonic_fill"] and result["num_cases"] == 3
    assert Path(result["files"]["summary_md"]).parent == gt / "inpainting_report"


@pytest.mark.slow
def test_bundle_command_exit_codes(folders, repo_root):
    """`python -m monai.bundle run evaluate --config_file configs/evaluate_inpaint.json ...`: 0, then non-zero."""
    gt, pred = folders

    def run():
        args = ["--config_file", str(repo_root / "configs" / "evaluate_inpaint.json"), "--bundle_root", str(repo_root)]
        args += ["--gt_dir", str(gt), "--pred_dir", str(pred)]
        cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluate", *args]
        return subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)

    done = run()
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((pred / "report" / "summary.json").read_text())["num_cases"] == 3
    os.remove(pred / "case-a-t1n-inference.nii.gz")
    done = run()
    assert done.returncode != 0 and "InpaintingEvaluationError" in done.stderr
