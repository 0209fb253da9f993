"""Label maps: every bad input is named with its problem, all at once; one-hot conditions; brain mask sources."""

import nibabel as nib
import numpy as np
import pytest
import torch

from wdm_bundle.data.label_maps import (
    brain_mask_file,
    check_case_name,
    label_datalist,
    label_generation_preprocessing,
    one_hot_conditions,
    validate_label_maps,
)
from wdm_bundle.data.validation import InvalidDataError

SHAPE = (10, 12, 8)


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _label(extra=None):
    seg = np.zeros(SHAPE, np.uint8)
    seg[3:6, 4:7, 2:5] = 2
    seg[4, 5, 3] = 3
    seg[4, 5, 4] = 1
    if extra is not None:
        seg[0, 0, 0] = extra
    return seg


def _case(tmp_path, name, seg, ref_shape=SHAPE, ref_affine=None):
    folder = tmp_path / name
    folder.mkdir()
    brain = np.zeros(ref_shape, np.float32)
    brain[1:-1, 1:-1, 1:-1] = 1.0
    return {
        "case": name,
        "seg": _save(folder / f"{name}-seg.nii.gz", seg),
        "brainmask": _save(folder / f"{name}-t1n.nii.gz", brain, ref_affine),
    }


def test_good_maps_pass(tmp_path):
    entries = [_case(tmp_path, f"c{i}", _label()) for i in range(2)]
    assert validate_label_maps(entries) == 2


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda t: _case(t, "bad", _label(extra=7)), "label values [7]"),
        (
            lambda t: _case(
                t, "bad", _label().astype(np.float32) + 0.5 * (np.arange(np.prod(SHAPE)) == 5).reshape(SHAPE)
            ),
            "non-integer",
        ),
        (lambda t: _case(t, "bad", _label(), ref_shape=(10, 12, 9)), "has shape (10, 12, 8)"),
        (lambda t: _case(t, "bad", _label(), ref_affine=np.diag([1.0, 1.0, 1.2, 1.0])), "affine"),
        (lambda t: _case(t, "bad", np.zeros(SHAPE, np.uint8)), "empty"),
        (lambda t: _case(t, "bad", _label()[..., 0]), "is 2D"),
        (lambda t: _case(t, "bad", np.stack([_label(), _label()], -1)), "is 4D"),
    ],
    ids=["unknown", "non-integer", "shape", "affine", "empty", "2d", "4d"],
)
def test_each_problem_names_the_file(tmp_path, make, problem):
    entry = make(tmp_path)
    with pytest.raises(InvalidDataError) as e:
        validate_label_maps([entry])
    assert f"{entry['seg']}: " in str(e.value) and problem in str(e.value)


def test_unreadable_and_several_listed_at_once(tmp_path):
    good = _case(tmp_path, "good", _label())
    unknown = _case(tmp_path, "unknown", _label(extra=4))
    empty = _case(tmp_path, "empty", np.zeros(SHAPE, np.uint8))
    broken = _case(tmp_path, "broken", _label())
    with open(broken["seg"], "wb") as f:
        f.write(b"not a nifti file")
    with pytest.raises(InvalidDataError) as e:
        validate_label_maps([good, unknown, empty, broken])
    message = str(e.value)
    assert message.startswith("3 of 4 label map(s)")
    assert f"{unknown['seg']}: holds label values [4]" in message
    assert f"{empty['seg']}: is empty" in message
    assert f"{broken['seg']}: cannot be read" in message
    assert good["seg"] not in message


def test_empty_allowed_and_custom_labels(tmp_path):
    empty = _case(tmp_path, "empty", np.zeros(SHAPE, np.uint8))
    assert validate_label_maps([empty], allow_empty=True) == 1
    four = _case(tmp_path, "four", _label(extra=4))
    assert validate_label_maps([four], labels=[1, 2, 3, 4]) == 1


def test_one_hot_conditions():
    seg = torch.tensor(_label())[None]
    brain = torch.zeros_like(seg, dtype=torch.float32)
    brain[:, 1:-1, 1:-1, 1:-1] = 0.3
    cond = one_hot_conditions(seg, brain, [1, 2, 3])
    assert cond.shape == (4, *SHAPE) and cond.dtype == torch.float32
    assert set(cond.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(cond[0].bool(), brain[0] != 0)
    for i, v in enumerate([1, 2, 3], start=1):
        assert torch.equal(cond[i].bool(), seg[0] == v)


def test_brain_mask_file_precedence_and_error(tmp_path):
    folder = tmp_path / "c1"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="case 'c1'"):
        brain_mask_file(folder, "c1")
    t2f = _save(folder / "c1-t2f.nii.gz", np.ones(SHAPE, np.float32))
    assert brain_mask_file(folder, "c1") == t2f
    t1c = _save(folder / "c1-t1c.nii.gz", np.ones(SHAPE, np.float32))
    assert brain_mask_file(folder, "c1") == t1c  # the first present of t1n, t1c, t2w, t2f
    mask = _save(folder / "c1-brainmask.nii.gz", np.ones(SHAPE, np.uint8))
    assert brain_mask_file(folder, "c1") == mask
    with pytest.raises(ValueError, match="not a plain folder name"):
        brain_mask_file(folder, "../c1")
    with pytest.raises(ValueError, match="brainmask_suffix"):
        brain_mask_file(folder, "c1", "/../x")
    with pytest.raises(ValueError):
        check_case_name("a/b")


def test_training_items(tmp_path):
    entries = []
    for i in range(2):
        e = _case(tmp_path, f"c{i}", _label())
        for c in ("t1c", "t2w", "t2f"):
            _save(tmp_path / f"c{i}" / f"c{i}-{c}.nii.gz", np.random.default_rng(i).random(SHAPE).astype(np.float32))
        entries.append(e)
    datalist = label_datalist(tmp_path, None, ["t1c", "t2f"])
    assert [sorted(e) for e in datalist] == [["brainmask", "case", "seg", "t1c", "t2f"]] * 2
    assert datalist[0]["brainmask"].endswith("c0-t1n.nii.gz")
    item = label_generation_preprocessing(["t1c", "t2f"], [1, 2, 3], [16, 16, 8], "end")(datalist[0])
    assert item["images"].shape == (2, 16, 16, 8) and item["conditions"].shape == (4, 16, 16, 8)
    assert 0.0 <= float(item["images"].min()) and float(item["images"].max()) <= 1.0
    seg = torch.tensor(_label())
    assert torch.equal(item["conditions"][2, :10, :12], (seg == 2).float())  # framed with end padding
    assert float(item["conditions"][:, 10:].abs().sum()) == 0.0
