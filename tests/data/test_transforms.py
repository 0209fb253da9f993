"""Grid framing: the reference placements, exact inversion for every size, one cWDM preprocessing everywhere."""

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from wdm_bundle.data import Placement, framing_transform, invert_framing, synthesis_preprocessing


def _volume(shape, seed=0):
    return MetaTensor(torch.rand(1, *shape, generator=torch.Generator().manual_seed(seed)) + 1.0)


def test_cwdm_reference_framing_pads_depth_at_the_end_and_crops_8():
    """ARCHITECTURE.md §5: 240x240x155 padded to 240x240x160 with zeros at the end, then [8:232, 8:232, :]."""
    x = _volume((240, 240, 155))
    framed = framing_transform("a", (224, 224, 160), Placement.END)({"a": x})["a"]
    expected = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 0), (0, 5)))[:, 8:232, 8:232, :]
    np.testing.assert_array_equal(framed.numpy(), expected)


def test_wdm_reference_framing_is_symmetric():
    """ARCHITECTURE.md §5: 240x240x155 zero-padded into 256^3 at [8:248, 8:248, 50:205]."""
    x = _volume((240, 240, 155))
    framed = framing_transform("a", (256, 256, 256), "symmetric")({"a": x})["a"]
    expected = np.zeros((1, 256, 256, 256), np.float32)
    expected[:, 8:248, 8:248, 50:205] = x.numpy()
    np.testing.assert_array_equal(framed.numpy(), expected)


@pytest.mark.parametrize("placement", list(Placement))
@pytest.mark.parametrize(
    "shape,roi",
    [
        ((155, 240, 240), (160, 224, 224)),
        ((37, 41, 29), (32, 44, 31)),
        ((30, 33, 35), (33, 30, 40)),
        ((16, 16, 16), (16, 16, 16)),
    ],
)
def test_framing_inverts_exactly_for_every_size(placement, shape, roi):
    x = _volume(shape)
    pre = Compose([framing_transform("a", roi, placement)])
    framed = pre({"a": x.clone()})["a"]
    assert tuple(framed.shape[1:]) == roi
    back = invert_framing(framed.as_tensor().clone(), framed, pre, "a")
    assert back.shape == x.shape
    kept = tuple(slice((n - r) // 2, (n - r) // 2 + r) if n > r else slice(None) for n, r in zip(shape, roi))
    np.testing.assert_array_equal(back[(slice(None), *kept)].numpy(), x[(slice(None), *kept)].numpy())
    assert float(back.sum()) == pytest.approx(float(x[(slice(None), *kept)].sum()), rel=1e-6)  # zeros elsewhere


def test_pad_to_multiple_inverts_exactly():
    for shape in itertools.product((29, 30, 31), repeat=3):
        x = _volume(shape)
        pre = Compose([framing_transform("a", None, "end", size_multiple=8)])
        framed = pre({"a": x.clone()})["a"]
        assert all(s % 8 == 0 for s in framed.shape[1:])
        np.testing.assert_array_equal(invert_framing(framed.as_tensor(), framed, pre, "a").numpy(), x.numpy())


def test_bad_framing_arguments_are_named():
    with pytest.raises(ValueError, match="'middle' is not a valid Placement"):
        framing_transform("a", (8, 8, 8), "middle")
    with pytest.raises(ValueError, match="pad_crop_size or size_multiple"):
        framing_transform("a", None)
    with pytest.raises(ValueError, match="data_range"):
        synthesis_preprocessing(["a", "b"], (8, 8, 8), data_range=(1, 0))
    with pytest.raises(ValueError, match="clip_percentiles"):
        synthesis_preprocessing(["a", "b"], (8, 8, 8), clip_percentiles=(50, 20))


def test_training_and_inference_preprocess_a_case_identically(repo_root, tmp_path):
    """train_cwdm.json's preprocessing (from files) equals the synthesizer's (from arrays), contrast by contrast."""
    contrasts = ["t1n", "t1c", "t2w", "t2f"]
    rng = np.random.default_rng(0)
    affine = np.diag([0.9, 1.1, 1.3, 1.0])
    files, arrays = {}, {}
    for c in contrasts:
        arrays[c] = (rng.random((37, 41, 29)) * 300).astype(np.float32)
        files[c] = str(tmp_path / f"case-{c}.nii.gz")
        nib.save(nib.Nifti1Image(arrays[c], affine), files[c])
    parser = ConfigParser()
    parser.read_config([str(repo_root / "configs" / f) for f in ("train.json", "train_cwdm.json")])
    parser.update(
        {
            "pad_crop_size": [32, 44, 32],
            "data_range": [-1.0, 1.0],
            "network_def#channels": [8, 8],
            "network_def#norm_num_groups": 8,
        }
    )
    assert parser["placement"] == "end"  # the reference cWDM placement is the default of the cWDM configs
    stacked = parser.get_parsed_content("train#preprocessing")(files)["images"]
    inference = synthesis_preprocessing(
        contrasts, [32, 44, 32], "end", (0.1, 99.9), (-1.0, 1.0), load=False, stack_key=None
    )
    framed = inference({c: MetaTensor(torch.from_numpy(a)) for c, a in arrays.items()})
    assert stacked.shape == (4, 32, 44, 32) and stacked.dtype == torch.float32
    assert float(stacked.min()) == -1.0 and float(stacked.max()) == 1.0  # data_range is applied, not ignored
    assert (stacked[:, :, :, 29:] == -1.0).all()  # padding (at the end of depth) is background, not mid-grey
    for i, c in enumerate(contrasts):
        torch.testing.assert_close(stacked[i], framed[c][0].as_tensor(), atol=0, rtol=0)


def test_training_spacing_follows_monai_orientation_and_resampling(tmp_path):
    """The recorded voxel size = MONAI's pixdim after `Orientationd` to RAS, times framed size / image size."""
    from monai.transforms import EnsureChannelFirstd, LoadImaged, Orientationd

    from wdm_bundle.data import training_spacing

    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 1.1, -0.9, 1.3, 1.0  # voxel axes -> S, L, A
    path = tmp_path / "case-t1n.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((37, 41, 29), np.float32), affine), path)
    item = Orientationd("image", axcodes="RAS")(EnsureChannelFirstd("image")(LoadImaged("image")({"image": path})))
    pixdim, shape = np.asarray(item["image"].pixdim, float), np.asarray(item["image"].shape[1:], float)
    assert list(shape) == [41, 29, 37]
    datalist = [{"image": str(path)}]
    np.testing.assert_allclose(training_spacing(datalist, "image", [20, 20, 20], None, "RAS"), pixdim * shape / 20)
    np.testing.assert_allclose(training_spacing(datalist, "image", [32, 32, 32], [64, 64, 64], "RAS"), pixdim * 2)
    np.testing.assert_allclose(training_spacing(datalist, "image", None, None, "RAS"), pixdim)
    np.testing.assert_allclose(training_spacing(datalist, "image", None, None, None), [1.1, 0.9, 1.3])
