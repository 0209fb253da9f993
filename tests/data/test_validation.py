import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.data import InvalidDataError, resolve_image_size, validate_images


def _nii(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([1.5, 1.5, 2.0, 1.0])), str(path))
    return str(path)


def test_good_files_pass(tmp_path):
    files = [{"image": _nii(tmp_path / f"{i}.nii.gz", np.random.rand(8, 8, 8))} for i in range(3)]
    files.append({"image": _nii(tmp_path / "4d1.nii.gz", np.random.rand(8, 8, 8, 1))})
    assert validate_images(files, size_multiple=4, progress=False) == 4


@pytest.mark.parametrize(
    "name,data,problem",
    [
        ("slice.nii.gz", np.zeros((8, 8)), "is 2D"),
        ("series.nii.gz", np.zeros((8, 8, 8, 3)), "is 4D"),
        ("nan.nii.gz", np.where(np.eye(8)[None] > 0, np.nan, 1.0) * np.ones((8, 8, 8)), "NaN"),
        ("odd.nii.gz", np.zeros((8, 8, 10)), "not divisible by 4"),
    ],
)
def test_bad_files_are_named(tmp_path, name, data, problem):
    good = {"image": _nii(tmp_path / "good.nii.gz", np.zeros((8, 8, 8)))}
    bad = {"image": _nii(tmp_path / name, data)}
    with pytest.raises(InvalidDataError, match=problem) as err:
        validate_images([good, bad], size_multiple=4, progress=False)
    assert name in str(err.value) and "good.nii.gz" not in str(err.value)
    assert "1 of 2 input file(s)" in str(err.value)


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not a nifti at all")
    with pytest.raises(InvalidDataError, match="broken.nii.gz: cannot be read"):
        validate_images([{"image": str(path)}], progress=False)


def test_mixed_shapes_without_padding(tmp_path):
    a = {"image": _nii(tmp_path / "a.nii.gz", np.zeros((8, 8, 8)))}
    b = {"image": _nii(tmp_path / "b.nii.gz", np.zeros((8, 8, 16)))}
    with pytest.raises(InvalidDataError, match="b.nii.gz: has shape"):
        validate_images([a, b], size_multiple=4, progress=False)
    validate_images([a, b], progress=False)  # fine when volumes are padded/cropped to one size


def test_empty_datalist():
    with pytest.raises(InvalidDataError, match="empty"):
        validate_images([], progress=False)


def test_resolve_image_size(tmp_path):
    a = {"image": _nii(tmp_path / "a.nii.gz", np.zeros((8, 6, 4)))}
    assert resolve_image_size([32, 32, 32], [64, 64, 64], [a]) == (32, 32, 32)
    assert resolve_image_size(None, [64, 64, 64], [a]) == (64, 64, 64)
    assert resolve_image_size(None, None, [a]) == (8, 6, 4)
