"""Tests of wdm_bundle.data.pseudo_validation and scripts/make_pseudo_validation.py."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.data.io import find_case_files
from wdm_bundle.data.pseudo_validation import choose_missing, make_pseudo_validation

CONTRASTS = ("t1n", "t1c", "t2w", "t2f")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cases_dir(tmp_path) -> Path:
    """6 complete cases (+ seg) with random 4^3 volumes, and one case lacking t2f."""
    root = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(7):
        case = f"BraTS-GLI-{i:05d}-000"
        for key in (*CONTRASTS, "seg"):
            if i == 6 and key == "t2f":
                continue
            (root / case).mkdir(parents=True, exist_ok=True)
            nib.save(
                nib.Nifti1Image(rng.random((4, 4, 4)).astype(np.float32), np.eye(4)),
                root / case / f"{case}-{key}.nii.gz",
            )
    return root


def test_layout_bytes_and_reproducible(cases_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        missing = make_pseudo_validation(cases_dir, tmp_path / "o", tmp_path / "g", seed=0)
    assert "BraTS-GLI-00006-000" in caplog.text and "t2f" in caplog.text  # incomplete: reported, skipped
    assert sorted(missing) == [f"BraTS-GLI-{i:05d}-000" for i in range(6)]
    assert json.loads((tmp_path / "o" / "missing.json").read_text()) == missing
    assert not (tmp_path / "o" / "BraTS-GLI-00006-000").exists()
    for case, drop in missing.items():
        kept = find_case_files(tmp_path / "o" / case)
        assert set(kept) == set(CONTRASTS) - {drop}  # exactly one missing, no seg
        gt = find_case_files(tmp_path / "g" / case)
        assert list(gt) == [drop] and Path(gt[drop]).name == f"{case}-{drop}.nii.gz"
        assert Path(gt[drop]).read_bytes() == (cases_dir / case / f"{case}-{drop}.nii.gz").read_bytes()
        for key, path in kept.items():
            assert Path(path).read_bytes() == (cases_dir / case / f"{case}-{key}.nii.gz").read_bytes()
    # same seed -> same choice; the choice of a case does not depend on the other cases
    again = make_pseudo_validation(cases_dir, tmp_path / "o2", tmp_path / "g2", seed=0, cases=["BraTS-GLI-00003-000"])
    assert again == {"BraTS-GLI-00003-000": missing["BraTS-GLI-00003-000"]}
    assert all(choose_missing(c, CONTRASTS, 0) == d for c, d in missing.items())


def test_choice_depends_on_seed():
    names = [f"case{i}" for i in range(40)]
    a = [choose_missing(n, CONTRASTS, seed=0) for n in names]
    b = [choose_missing(n, CONTRASTS, seed=1) for n in names]
    assert a != b and set(a) == set(CONTRASTS)
    assert a == [choose_missing(n, list(CONTRASTS), seed=0) for n in names]


def test_refuses_non_empty_and_overwrite(cases_dir, tmp_path):
    out, gt = tmp_path / "o", tmp_path / "g"
    make_pseudo_validation(cases_dir, out, gt, seed=0, keep_seg=True)
    assert "seg" in find_case_files(out / "BraTS-GLI-00000-000")
    with pytest.raises(FileExistsError, match="output_dir"):
        make_pseudo_validation(cases_dir, out, tmp_path / "g_new", seed=1)
    with pytest.raises(FileExistsError, match="gt_dir"):
        make_pseudo_validation(cases_dir, tmp_path / "o_new", gt, seed=1)
    assert not (tmp_path / "o_new").exists()
    missing = make_pseudo_validation(cases_dir, out, gt, seed=1, overwrite=True)
    for case, drop in missing.items():  # case folders replaced: no file of the earlier run left over
        assert set(find_case_files(out / case)) == set(CONTRASTS) - {drop}
        assert list(find_case_files(gt / case)) == [drop]
    with pytest.raises(ValueError, match="different folders"):
        make_pseudo_validation(cases_dir, cases_dir, gt, overwrite=True)


def test_datalist_split_and_errors(cases_dir, tmp_path):
    datalist = cases_dir / "datalist.json"
    datalist.write_text(
        json.dumps(
            {
                "training": [{"case": "BraTS-GLI-00000-000"}],
                "test": [{"case": "BraTS-GLI-00004-000"}, {"case": "BraTS-GLI-00006-000"}],
            }
        )
    )
    missing = make_pseudo_validation(None, tmp_path / "o", tmp_path / "g", datalist=datalist, split="test")
    assert list(missing) == ["BraTS-GLI-00004-000"]  # 00006 lacks t2f
    with pytest.raises(FileNotFoundError, match="nope"):
        make_pseudo_validation(cases_dir, tmp_path / "o3", tmp_path / "g3", cases=["nope"])
    with pytest.raises(ValueError, match="no complete case"):
        make_pseudo_validation(cases_dir, tmp_path / "o4", tmp_path / "g4", cases=["BraTS-GLI-00006-000"])
    with pytest.raises(ValueError, match="'seed'"):
        make_pseudo_validation(cases_dir, tmp_path / "o5", tmp_path / "g5", seed=-1)


def test_script_function(cases_dir, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_pseudo_validation", REPO_ROOT / "scripts" / "make_pseudo_validation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "python scripts/make_pseudo_validation.py --input_dir" in module.make_pseudo_validation.__doc__
    path = module.make_pseudo_validation(
        str(cases_dir), str(tmp_path / "o"), str(tmp_path / "g"), contrasts=["t1n", "t2w"], cases="BraTS-GLI-00001-000"
    )
    missing = json.loads(Path(path).read_text())
    assert list(missing) == ["BraTS-GLI-00001-000"] and missing["BraTS-GLI-00001-000"] in ("t1n", "t2w")
    assert len(find_case_files(tmp_path / "o" / "BraTS-GLI-00001-000")) == 1
