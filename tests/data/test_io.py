"""Tests of wdm_bundle.data.io: NIfTI names, reading volumes (singleton 4th dim), case folders and contrast files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.data import CONTRASTS
from wdm_bundle.data.io import (
    contrast_files,
    find_case_files,
    find_cases,
    list_volumes,
    load_volume,
    nifti_stem,
    volume_shape,
)


def _save(path, shape=(4, 5, 6), value=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, np.float32), np.eye(4)), str(path))
    return path


def test_names_and_contrasts():
    assert CONTRASTS == ("t1n", "t1c", "t2w", "t2f")
    assert nifti_stem("c1-t1n.nii.gz") == "c1-t1n" and nifti_stem("c1-t1n.nii") == "c1-t1n"
    assert nifti_stem("c1-t1n.nrrd") is None


def test_singleton_4d_reads_as_3d(tmp_path):
    path = _save(tmp_path / "v.nii.gz", (4, 5, 6, 1), 2.0)
    vol = load_volume(path)
    assert vol.shape == (4, 5, 6) and vol.dtype == np.float32 and np.all(vol == 2.0)
    assert volume_shape(path) == (4, 5, 6)
    assert volume_shape(_save(tmp_path / "w.nii", (4, 5, 6, 2))) == (4, 5, 6, 2)  # a real 4D stays 4D


def test_list_volumes(tmp_path):
    with pytest.raises(FileNotFoundError, match="real_dir .*nope.* does not exist"):
        list_volumes(tmp_path / "nope", "real_dir")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="real_dir .* holds no NIfTI files"):
        list_volumes(tmp_path, "real_dir")
    files = [_save(tmp_path / name) for name in ("b.nii", "a.nii.gz")]
    assert list_volumes(tmp_path, "real_dir") == sorted(files)


def test_case_folders_and_files(tmp_path):
    for c in ("t1n", "t2w"):
        _save(tmp_path / "c1" / f"c1-{c}.nii.gz")
    _save(tmp_path / "c1" / "other.nii")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="input_dir .*nope.* does not exist"):
        find_cases(tmp_path / "nope")
    assert find_cases(tmp_path) == [tmp_path / "c1"]
    assert find_cases(tmp_path, require_nifti=False) == [tmp_path / "c1", tmp_path / "empty"]
    assert set(find_case_files(tmp_path / "c1")) == {"t1n", "t2w", "other"}
    files = contrast_files(tmp_path / "c1", "c1", CONTRASTS)
    assert files == {c: str(tmp_path / "c1" / f"c1-{c}.nii.gz") for c in ("t1n", "t2w")}
