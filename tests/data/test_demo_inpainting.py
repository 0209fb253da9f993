"""Tests of the demo inpainting data (healthy rendering in wdm_bundle.data.demo, wdm_bundle.data.demo_inpainting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.data.demo import make_demo_subject
from wdm_bundle.data.demo_inpainting import INPAINTING_SUFFIXES, make_inpainting_dataset, make_inpainting_subject
from wdm_bundle.data.io import CONTRASTS

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lesion_subject():
    return make_demo_subject(32, seed=0, lesion=True, return_healthy=True)


def test_healthy_rendering_equal_outside_lesion_region(lesion_subject):
    s = lesion_subject
    plain = make_demo_subject(32, seed=0, lesion=True)
    region, seg = s["lesion_region"], s["seg"] > 0
    assert region.dtype == bool and np.all(region[seg]) and region.sum() > seg.sum()
    for c in CONTRASTS:
        assert np.array_equal(s[c], plain[c])  # the lesion image itself is unchanged
        healthy = s[f"{c}_healthy"]
        assert healthy.dtype == np.float32 and healthy.shape == (32, 32, 32)
        # Outside the lesion region: equal voxel for voxel (same tissues, bias and noise draws).
        assert np.array_equal(healthy[~region], s[c][~region]), c
        assert np.all((healthy > 0) == (s[c] > 0))  # same brain
        # Inside the lesion (seg > 0): different tissue, so (nearly) every voxel differs.
        assert np.mean(healthy[seg] != s[c][seg]) > 0.95, c
        assert np.abs(healthy[seg] - s[c][seg]).mean() > 50, c


def test_healthy_rendering_without_lesion_is_the_image():
    s = make_demo_subject(24, seed=4, lesion=False, return_healthy=True)
    assert not s["lesion_region"].any()
    for c in CONTRASTS:
        assert np.array_equal(s[f"{c}_healthy"], s[c])
    assert "t1n_healthy" not in make_demo_subject(24, seed=4, lesion=False)


@pytest.mark.parametrize("lesion", [True, False])
def test_inpainting_subject(lesion):
    a = make_inpainting_subject(32, seed=(1, 2), lesion=lesion)
    assert bool(a["lesion"]) == lesion
    image, mask, healthy, unhealthy = a["image"], a["mask"], a["mask_healthy"], a["mask_unhealthy"]
    for key in ("image", "voided", "healthy_truth"):
        assert a[key].shape == (32, 32, 32) and a[key].dtype == np.float32
    for m in (mask, healthy, unhealthy):
        assert m.shape == (32, 32, 32) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert np.array_equal(mask, healthy)
    assert np.array_equal(a["voided"], image * (1 - mask))
    assert np.all(image[healthy > 0] > 0) and not np.any(healthy & unhealthy)
    assert np.array_equal(a["image"][unhealthy == 0], a["healthy_truth"][unhealthy == 0])
    assert unhealthy.any() == lesion
    assert np.array_equal(image, make_demo_subject(32, seed=(1, 2), lesion=lesion)["t1n"])
    b = make_inpainting_subject(32, seed=(1, 2), lesion=lesion)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_inpainting_subject_unhealthy_mask():
    a = make_inpainting_subject(32, seed=3, lesion=True, mask_kind="unhealthy")
    assert np.array_equal(a["mask"], a["mask_unhealthy"]) and a["mask"].any()
    assert np.array_equal(a["voided"], a["image"] * (1 - a["mask"]))
    known = a["mask"] == 0  # the known region is the healthy truth exactly
    assert np.array_equal(a["voided"][known], a["healthy_truth"][known])
    with pytest.raises(ValueError, match="mask_kind"):
        make_inpainting_subject(16, mask_kind="tumour")


def _check_dataset(root: Path, num_train: int, num_test: int, test_mask: str = "healthy"):
    datalist = json.loads((root / "datalist.json").read_text())
    assert len(datalist["training"]) == num_train and len(datalist["test"]) == num_test
    assert datalist["suffixes"] == INPAINTING_SUFFIXES
    for split in ("training", "test"):
        for entry in datalist[split]:
            case = entry["case"]
            keys = set(INPAINTING_SUFFIXES) - ({"healthy_truth"} if not entry["lesion"] else set())
            assert set(entry) == keys | {"case", "lesion", "mask_kind"}
            imgs = {}
            for key in keys:
                assert entry[key] == f"{case}/{case}{INPAINTING_SUFFIXES[key]}"
                img = nib.load(str(root / entry[key]))
                assert img.shape == tuple(datalist["size"])
                assert np.allclose(np.diag(img.affine)[:3], datalist["spacing"])
                assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
                imgs[key] = np.asarray(img.dataobj)
            assert imgs["mask"].dtype == np.uint8 and imgs["mask_healthy"].dtype == np.uint8
            assert np.array_equal(imgs["voided"], imgs["image"] * (1 - imgs["mask"]))
            assert imgs["mask_unhealthy"].any() == entry["lesion"]
            kind = test_mask if split == "test" and entry["lesion"] else "healthy"
            assert entry["mask_kind"] == kind
            assert np.array_equal(imgs["mask"], imgs[f"mask_{kind}"])
            if entry["lesion"]:
                outside = imgs["mask_unhealthy"] == 0
                assert np.array_equal(imgs["healthy_truth"][outside], imgs["image"][outside])
    return datalist


def test_make_inpainting_dataset(tmp_path):
    path = make_inpainting_dataset(tmp_path, num_cases=4, size=24, num_test=2, seed=1, lesion_prob=0.5, progress=False)
    assert path == str(tmp_path / "datalist.json")
    datalist = _check_dataset(tmp_path, 2, 2)
    entries = datalist["training"] + datalist["test"]
    assert {e["lesion"] for e in entries} == {True, False}  # seed 1 draws both kinds
    # Case i is the demo subject (seed, i), the same as make_demo_dataset writes.
    ref = make_demo_subject(24, seed=(1, 3))
    img = nib.load(str(tmp_path / entries[3]["image"]))
    assert np.array_equal(np.asarray(img.dataobj), ref["t1n"]) and np.allclose(img.affine, ref["affine"])
    with pytest.raises(FileExistsError, match="inpainting data set"):
        make_inpainting_dataset(tmp_path, num_cases=2, size=24, num_test=1, progress=False)
    with pytest.raises(ValueError, match="test_mask"):
        make_inpainting_dataset(tmp_path / "x", test_mask="lesion")
    with pytest.raises(ValueError, match="num_test"):
        make_inpainting_dataset(tmp_path / "y", num_cases=2, num_test=2)


def test_cli_writes_the_set(tmp_path):
    out = tmp_path / "inp"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "make_demo_data.py"), "--layout", "inpainting"]
    cmd += ["--output_dir", str(out), "--num_cases", "2", "--num_test", "1", "--size", "16", "--seed", "1"]
    cmd += ["--lesion_prob", "1.0", "--test_mask", "unhealthy", "--progress", "false"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("datalist.json")
    datalist = _check_dataset(out, 1, 1, test_mask="unhealthy")
    assert all(e["lesion"] for e in datalist["training"] + datalist["test"])
    # "--overwrite false" from the command line is the string "false": it must not replace the set
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    result = subprocess.run(cmd + ["--overwrite", "false"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "already holds" in result.stderr
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
