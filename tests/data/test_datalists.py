import json

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.data import build_datalist, find_case_files


def _nii(path, shape=(8, 8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(path))
    return path


def test_case_folders_brats_layout(tmp_path):
    for case in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000"):
        for s in ("t1n", "t2w", "seg"):
            _nii(tmp_path / case / f"{case}-{s}.nii.gz")
    (tmp_path / "notes.txt").write_text("ignored")
    dl = build_datalist(tmp_path, keys={"image": "t1n"})
    assert [e["case"] for e in dl] == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]
    assert dl[0]["image"].endswith("BraTS-GLI-00001-000-t1n.nii.gz")
    assert set(find_case_files(tmp_path / "BraTS-GLI-00001-000")) == {"t1n", "t2w", "seg"}
    with pytest.raises(ValueError, match="BraTS-GLI-00002-000-t1c"):
        build_datalist(tmp_path, keys={"image": "t1c"})


def test_flat_folder(tmp_path):
    _nii(tmp_path / "a.nii.gz")
    _nii(tmp_path / "b.nii")
    dl = build_datalist(tmp_path)
    assert [e["case"] for e in dl] == ["a", "b"]


def test_json_datalist(tmp_path):
    _nii(tmp_path / "c1" / "x.nii.gz")
    (tmp_path / "dl.json").write_text(json.dumps({"training": [{"case": "c1", "t1n": "c1/x.nii.gz"}], "test": []}))
    dl = build_datalist(datalist=tmp_path / "dl.json", keys={"image": "t1n"})
    assert dl == [{"case": "c1", "image": str(tmp_path / "c1" / "x.nii.gz")}]
    with pytest.raises(ValueError, match="no non-empty list under 'test'"):
        build_datalist(datalist=tmp_path / "dl.json", keys={"image": "t1n"}, split="test")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_datalist(datalist=tmp_path / "bad.json")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_datalist(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no NIfTI"):
        build_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="datalist"):
        build_datalist(datalist=tmp_path / "missing.json")
