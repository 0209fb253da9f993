"""Tests of the embedded demo-data generator (wdm_bundle.data.demo)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.data.demo import load_mni_templates, make_demo_dataset, make_demo_subject
from wdm_bundle.data.io import CONTRASTS

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def subject():
    return make_demo_subject(32, seed=0, lesion=True, return_tissues=True)


def _brain(s):
    """Brain mask from the returned tissue fractions (they sum to 1 inside the brain, 0 outside)."""
    return (s["gm"] + s["wm"] + s["csf"] > 0) | (s["seg"] > 0)


def test_templates():
    t = load_mni_templates()
    assert set(t) == {"t1", "gm", "wm", "csf", "mask", "affine"}
    assert t["affine"].shape == (4, 4) and np.allclose(np.diag(t["affine"])[:3], 1.0)
    for key in ("t1", "gm", "wm", "csf", "mask"):
        assert t[key].shape == t["t1"].shape and t[key].dtype == np.float32
        assert t[key].min() >= 0 and t[key].max() <= 1
        assert not t[key].flags.writeable
    brain = t["mask"] > 0
    assert 0.1 < brain.mean() < 0.4
    assert np.all(t["gm"][~brain] == 0) and np.all(t["csf"][~brain] == 0)
    # ventricles/sulci: CSF is dark in T1, WM bright
    assert t["t1"][t["csf"] > 0.9].mean() < 0.6 * t["t1"][t["wm"] > 0.9].mean()
    assert load_mni_templates()["gm"] is t["gm"]  # cached in-process


def test_subject_shapes_dtypes_background(subject):
    assert {*CONTRASTS, "seg", "affine"} <= set(subject)
    brain = _brain(subject)
    assert 0.15 < brain.mean() < 0.8
    for c in CONTRASTS:
        img = subject[c]
        assert img.shape == (32, 32, 32) and img.dtype == np.float32
        assert np.all(img[~brain] == 0), f"{c}: background not zero"
        assert np.all(img[brain] > 0) and np.isfinite(img).all(), c
    assert subject["seg"].dtype == np.uint8 and subject["seg"].shape == (32, 32, 32)
    assert set(np.unique(subject["seg"])) == {0, 1, 2, 3}
    assert np.all(subject["seg"][~brain] == 0)
    affine = subject["affine"]
    assert affine.dtype == np.float64 and affine.shape == (4, 4)
    assert np.allclose(np.diag(affine)[:3], [160 / 32, 192 / 32, 160 / 32])
    wm = subject["t1n"][(subject["wm"] > 0.85) & (subject["seg"] == 0)].mean()
    assert 400 < wm < 1100  # scanner-like scale, not normalised

    s = make_demo_subject((24, 20, 16), seed=3, lesion=False)
    assert all(s[c].shape == (24, 20, 16) for c in CONTRASTS) and s["seg"].shape == (24, 20, 16)
    assert not s["seg"].any()
    assert np.allclose(np.diag(s["affine"])[:3], [160 / 24, 192 / 20, 160 / 16])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_contrasts(seed):
    s = make_demo_subject(32, seed=seed, lesion=True, return_tissues=True)
    healthy = s["seg"] == 0
    wm, gm, csf = (healthy & (s[k] > th) for k, th in (("wm", 0.85), ("gm", 0.6), ("csf", 0.5)))
    assert wm.sum() > 50 and gm.sum() > 50 and csf.sum() > 10

    def mean(c, region):
        return float(s[c][region].mean())

    assert mean("t1n", wm) > mean("t1n", gm) > mean("t1n", csf)
    assert mean("t1c", wm) > mean("t1c", gm) > mean("t1c", csf)
    assert mean("t2w", csf) > mean("t2w", gm) > mean("t2w", wm)
    assert mean("t2f", gm) > mean("t2f", wm) and mean("t2f", csf) < mean("t2f", gm)
    # lesion: bright in FLAIR, dark core in T1, enhancing rim bright in T1c
    lesion = s["seg"] > 0
    assert mean("t2f", lesion) > 1.3 * mean("t2f", wm)
    assert mean("t2f", s["seg"] == 2) > mean("t2f", wm)
    assert mean("t1n", s["seg"] == 1) < mean("t1n", wm)
    assert mean("t1c", s["seg"] == 3) > mean("t1c", wm)
    assert mean("t2w", lesion) > mean("t2w", wm)


def test_reproducible_and_seed_dependent():
    a = make_demo_subject(16, seed=7)
    b = make_demo_subject(16, seed=7)
    c = make_demo_subject(16, seed=8)
    for key in (*CONTRASTS, "seg", "affine"):
        assert np.array_equal(a[key], b[key]), key
    assert not np.array_equal(a["t1n"], c["t1n"])
    assert not np.array_equal(a["t1n"] > 0, c["t1n"] > 0)  # different anatomy, not only noise
    # the lesion switch does not change the rest of the subject
    no_lesion = make_demo_subject(16, seed=(1, 2), lesion=False)
    with_lesion = make_demo_subject(16, seed=(1, 2), lesion=True)
    assert with_lesion["seg"].any() and not no_lesion["seg"].any()
    brain = no_lesion["t2f"] > 0
    assert np.array_equal(brain, with_lesion["t2f"] > 0)
    assert np.mean(no_lesion["t2f"][brain] == with_lesion["t2f"][brain]) > 0.85  # all but the lesion area


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        make_demo_subject(4)
    with pytest.raises(ValueError, match="num_cases"):
        make_demo_dataset(tmp_path / "a", num_cases=0, progress=False)
    with pytest.raises(ValueError, match="num_test"):
        make_demo_dataset(tmp_path / "a", num_cases=3, num_test=3, progress=False)
    with pytest.raises(ValueError, match="num_test"):
        make_demo_dataset(tmp_path / "a", num_cases=3, num_test=-1, progress=False)
    with pytest.raises(ValueError, match="size"):
        make_demo_dataset(tmp_path / "a", num_cases=3, num_test=1, size=7, progress=False)
    assert not (tmp_path / "a").exists()


def test_make_demo_dataset(tmp_path):
    out = tmp_path / "demo"
    path = make_demo_dataset(out, num_cases=3, size=16, num_test=1, seed=0, progress=False)
    assert Path(path) == out / "datalist.json"
    datalist = json.loads(Path(path).read_text())
    assert datalist["size"] == [16, 16, 16] and datalist["seed"] == 0
    assert [e["case"] for e in datalist["training"]] == ["BraTS-DEMO-00000-000", "BraTS-DEMO-00001-000"]
    assert [e["case"] for e in datalist["test"]] == ["BraTS-DEMO-00002-000"]
    for entry in datalist["training"] + datalist["test"]:
        assert set(entry) == {"case", *CONTRASTS, "seg"}
        for key in (*CONTRASTS, "seg"):
            assert not Path(entry[key]).is_absolute()
            assert entry[key] == f"{entry['case']}/{entry['case']}-{key}.nii.gz"
            img = nib.load(out / entry[key])
            assert img.shape == (16, 16, 16)
            assert img.get_data_dtype() == (np.uint8 if key == "seg" else np.float32)
            spacing = np.abs(np.diag(img.affine)[:3])
            assert np.allclose(img.header.get_zooms(), spacing)
            assert np.allclose(spacing, [10.0, 12.0, 10.0])
            assert not np.allclose(img.affine, np.eye(4))
            assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
            assert img.header.get_xyzt_units()[0] == "mm"
    # a written case equals the in-memory subject for (seed, index)
    ref = make_demo_subject(16, seed=(0, 2))
    written = nib.load(out / datalist["test"][0]["t2f"])
    assert np.array_equal(np.asarray(written.dataobj), ref["t2f"])
    assert np.allclose(written.affine, ref["affine"])

    with pytest.raises(FileExistsError, match="demo"):
        make_demo_dataset(out, num_cases=3, size=16, num_test=1, progress=False)
    (out / "datalist.json").unlink()  # case folders alone also block
    with pytest.raises(FileExistsError):
        make_demo_dataset(out, num_cases=3, size=16, num_test=1, progress=False)
    make_demo_dataset(out, num_cases=2, size=16, num_test=0, overwrite=True, progress=False)
    assert len(json.loads((out / "datalist.json").read_text())["training"]) == 2


def test_script_function(tmp_path):
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO_ROOT / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    usage = "python scripts/make_demo_data.py --output_dir demo_data --num_cases 40 --size 32"
    assert usage in module.make_demo_data.__doc__
    path = module.make_demo_data(output_dir=str(tmp_path / "s"), num_cases=2, size=8, num_test=1, progress=False)
    assert json.loads(Path(path).read_text())["test"][0]["case"] == "BraTS-DEMO-00001-000"


def test_script_command_line(tmp_path):
    """The script runs without installing the package, from any working directory."""
    script = REPO_ROOT / "scripts" / "make_demo_data.py"
    args = "--output_dir cli --num_cases 2 --size 8 --num_test 1 --progress False".split()
    cmd = [sys.executable, str(script), *args]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli" / "datalist.json").is_file()
    assert (tmp_path / "cli" / "BraTS-DEMO-00001-000" / "BraTS-DEMO-00001-000-seg.nii.gz").is_file()
