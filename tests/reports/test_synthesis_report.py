"""Tests of wdm_bundle.reports.synthesis.compare_synthesis on a small demo pseudo-validation set."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.data.demo import make_demo_dataset
from wdm_bundle.data.pseudo_validation import make_pseudo_validation
from wdm_bundle.metrics.paired import METRIC_KEYS
from wdm_bundle.reports.synthesis import METHODS, compare_synthesis

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pseudo_val(tmp_path_factory):
    """6 demo cases at 16^3 (2 training, 4 test); the test ones made a pseudo-validation set."""
    root = tmp_path_factory.mktemp("synth")
    datalist = make_demo_dataset(root / "data", num_cases=6, size=16, num_test=4, seed=0, progress=False)
    missing = make_pseudo_validation(None, root / "pv", root / "gt", seed=0, datalist=datalist, split="test")
    return {"root": root, "datalist": datalist, "missing": missing}


def _predict_ground_truth(pseudo_val, pred_dir: Path, skip=()) -> None:
    pred_dir.mkdir()
    for case, drop in pseudo_val["missing"].items():
        if case not in skip:
            name = f"{case}-{drop}.nii.gz"
            shutil.copyfile(pseudo_val["root"] / "gt" / case / name, pred_dir / name)


def test_perfect_prediction_beats_baselines(pseudo_val, tmp_path):
    root = pseudo_val["root"]
    _predict_ground_truth(pseudo_val, tmp_path / "pred")
    result = compare_synthesis(root / "pv", root / "gt", tmp_path / "pred", pseudo_val["datalist"])
    assert result["num_cases"] == 4 and result["failures"] == []
    rows = result["per_case"]
    assert len(rows) == 4 * len(METHODS)
    by = {(r["case"], r["method"]): r for r in rows}
    for case, drop in pseudo_val["missing"].items():
        pred = by[case, "prediction"]
        assert pred["missing"] == drop
        assert pred["ssim"] == pytest.approx(1.0, abs=1e-5) and pred["ssim_mask"] == pytest.approx(1.0, abs=1e-5)
        assert pred["mse"] == 0 and pred["psnr"] == np.inf
        for baseline in ("best_correlated", "train_hist_match", "mean_target"):
            assert by[case, baseline]["ssim"] < 0.99 and by[case, baseline]["mse_mask"] > 0
            assert np.isfinite(by[case, baseline]["psnr_mask"])
        assert result["best_correlated_choice"][case] in {"t1n", "t1c", "t2w", "t2f"} - {drop}
        assert result["train_hist_match_source"][drop] in {"t1n", "t1c", "t2w", "t2f"} - {drop}
    # demo data: t1n and t1c share the tissue contrast, so each is the other's training choice
    for drop, source in result["train_hist_match_source"].items():
        if drop in ("t1n", "t1c"):
            assert source == {"t1n": "t1c", "t1c": "t1n"}[drop]

    # files, default output_dir = pred_dir
    out = tmp_path / "pred"
    with open(out / "per_case.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0]) == ["case", "missing", "method", *METRIC_KEYS] and len(csv_rows) == len(rows)
    assert float(csv_rows[0]["psnr"]) == np.inf
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["prediction"]["all"]["n"] == 4
    assert (
        summary["methods"]["mean_target"]["all"]["ssim"]["mean"]
        < summary["methods"]["prediction"]["all"]["ssim"]["mean"]
    )
    assert sum(g["n"] for g in summary["methods"]["prediction"]["by_missing"].values()) == 4
    assert set(summary["missing_contrasts"]) == set(pseudo_val["missing"].values())
    md = (out / "summary.md").read_text()
    assert "| method | all: SSIM | all: SSIM brain | all: PSNR | all: PSNR brain |" in md
    assert all(f"| {m} |" in md for m in METHODS)
    # one picture per case: inputs | synthesised | ground truth | |error|
    pictures = sorted(p.name for p in (out / "pictures").glob("*.png"))
    assert pictures == sorted(f"{case}-{drop}.png" for case, drop in pseudo_val["missing"].items())


def test_missing_prediction_reported(pseudo_val, tmp_path):
    root = pseudo_val["root"]
    skipped = sorted(pseudo_val["missing"])[0]
    _predict_ground_truth(pseudo_val, tmp_path / "pred", skip={skipped})
    result = compare_synthesis(
        root / "pv", root / "gt", tmp_path / "pred", pseudo_val["datalist"], output_dir=tmp_path / "rep"
    )
    assert result["num_cases"] == 3 and {r["case"] for r in result["per_case"]} == set(pseudo_val["missing"]) - {
        skipped
    }
    (failure,) = result["failures"]
    assert failure["case"] == skipped and "no prediction" in failure["reason"]
    assert failure["missing"] == pseudo_val["missing"][skipped]
    assert skipped in (tmp_path / "rep" / "summary.md").read_text()
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["failures"] == result["failures"]


def test_training_shape_mismatch_and_roi(pseudo_val, tmp_path):
    root = pseudo_val["root"]
    _predict_ground_truth(pseudo_val, tmp_path / "pred")
    entry = {"case": "big"}
    for c in ("t1n", "t1c", "t2w", "t2f"):
        nib.save(
            nib.Nifti1Image(np.random.default_rng(0).random((18, 18, 18)).astype(np.float32), np.eye(4)),
            tmp_path / f"big-{c}.nii.gz",
        )
        entry[c] = f"big-{c}.nii.gz"
    (tmp_path / "dl.json").write_text(json.dumps({"training": [entry]}))
    with pytest.raises(ValueError, match=r"\(18, 18, 18\).*pad_crop_size"):
        compare_synthesis(root / "pv", root / "gt", tmp_path / "pred", tmp_path / "dl.json")
    result = compare_synthesis(
        root / "pv", root / "gt", tmp_path / "pred", tmp_path / "dl.json", pad_crop_size=[16, 16, 16]
    )
    assert result["num_cases"] == 4


def test_script_function(pseudo_val, tmp_path):
    spec = importlib.util.spec_from_file_location("compare_synthesis", REPO_ROOT / "scripts" / "compare_synthesis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "python scripts/compare_synthesis.py --input_dir" in module.compare_synthesis.__doc__
    root = pseudo_val["root"]
    _predict_ground_truth(pseudo_val, tmp_path / "pred")
    path = module.compare_synthesis(str(root / "pv"), str(root / "gt"), str(tmp_path / "pred"), pseudo_val["datalist"])
    assert Path(path).name == "summary.md" and Path(path).is_file()


def test_bundle_workflow(pseudo_val, tmp_path, repo_root):
    """`python -m monai.bundle run evaluate --config_file configs/evaluate_synthesis.json ...` as a ConfigWorkflow."""
    from monai.bundle import ConfigWorkflow

    root = pseudo_val["root"]
    _predict_ground_truth(pseudo_val, tmp_path / "pred")
    wf = ConfigWorkflow(
        config_file=str(repo_root / "configs" / "evaluate_synthesis.json"),
        workflow_type="infer",
        meta_file=str(repo_root / "configs" / "metadata.json"),
        run_id="evaluate",
        input_dir=str(root / "pv"),
        gt_dir=str(root / "gt"),
        pred_dir=str(tmp_path / "pred"),
        train_datalist=str(pseudo_val["datalist"]),
    )
    wf.initialize()
    wf.run()
    report = tmp_path / "pred" / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert (
        summary["num_cases"] == 4 and (report / "per_case.csv").exists() and list((report / "pictures").glob("*.png"))
    )
