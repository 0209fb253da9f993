"""The MONAI Label app's inpainting task in-process (no monailabel needed): routes, geometry, checks, limits."""

import shutil

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.diffusion.repaint import resampling_schedule
from wdm_bundle.label import BundleConfig, InpaintingService, RequestError, configs_from_conf
from wdm_bundle.label.inpainting import network_calls
from wdm_bundle.label.sampling import Limits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inpainting_studies(demo_case, label_spec, tmp_path_factory):
    root = tmp_path_factory.mktemp("inpainting_studies") / "studies"
    return root, label_spec.make_inpainting_studies(root, demo_case)


def _service(repo_root, tiny_models, label_spec, limits=None, **overrides):
    conf = {"ckpt_path": str(tiny_models / "model.pt"), **label_spec.inpainting_fast, **overrides}
    return InpaintingService(BundleConfig(repo_root, label_spec.inpainting_configs, conf), limits)


@pytest.fixture(scope="module")
def inpainting(repo_root, tiny_models, label_spec):
    return _service(repo_root, tiny_models, label_spec)


def test_inpaints_on_the_input_grid(inpainting, inpainting_studies, tmp_path, label_spec):
    studies, arrays = inpainting_studies
    path, info = inpainting(studies / "inp_ok", {"seed": 4}, tmp_path)
    assert path.endswith("inp_ok-t1n-inference.nii.gz")
    assert info == {
        "case": "inp_ok",
        "shape": list(label_spec.inpaint_shape),
        "mask_voxels": int(arrays["mask"].sum()),
        "seed": 4,
        **label_spec.inpainting_fast,
        "timestep_spacing": "linspace",  # the config's
        "network_calls": 5,
    }
    out, ref = nib.load(path), nib.load(studies / "inp_ok" / "inp_ok-t1n-voided.nii.gz")
    assert out.shape == ref.shape == label_spec.inpaint_shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    np.testing.assert_allclose(out.affine, label_spec.oblique_affine(), atol=1e-5)
    assert out.header.get_data_dtype() == np.float32 and out.header["sform_code"] == ref.header["sform_code"]
    np.testing.assert_array_equal(out.header.get_zooms(), ref.header.get_zooms())
    data, mask = np.asarray(out.dataobj), arrays["mask"] > 0
    np.testing.assert_array_equal(data[~mask], arrays["voided"][~mask])  # bit for bit outside the mask
    assert np.isfinite(data).all() and (data[mask] != 0).all()  # the void is filled
    # the same case named by its voided image or its mask; the seed is used
    for image in ("inp_ok-t1n-voided.nii.gz", "inp_ok-mask.nii.gz"):
        other, _ = inpainting(studies / "inp_ok" / image, {"seed": 4}, tmp_path)
        np.testing.assert_array_equal(np.asarray(nib.load(other).dataobj), data)
    other, _ = inpainting(studies / "inp_ok", {"seed": 5}, tmp_path)
    assert not np.array_equal(np.asarray(nib.load(other).dataobj)[mask], data[mask])


def test_uploads_and_flat_files(inpainting, inpainting_studies, tmp_path):
    studies, arrays = inpainting_studies
    a, _ = inpainting(studies / "inp_ok", {}, tmp_path)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    shutil.copy(studies / "inp_ok" / "inp_ok-t1n-voided.nii.gz", uploads / "image.nii.gz")
    shutil.copy(studies / "inp_ok" / "inp_ok-mask.nii.gz", uploads / "mask.nii.gz")
    b, info = inpainting(
        uploads / "image.nii.gz", {"case": "inp_ok"}, tmp_path, mask=uploads / "mask.nii.gz", upload=True
    )
    assert info["case"] == "inp_ok"
    np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
    # a datastore image with an uploaded mask (here: another region)
    other = np.zeros_like(arrays["mask"])
    other[10:13, 10:13, 10:13] = 1
    nib.save(nib.Nifti1Image(other, nib.load(uploads / "mask.nii.gz").affine), str(uploads / "other.nii.gz"))
    c, info = inpainting(studies / "inp_ok", {}, tmp_path, mask=uploads / "other.nii.gz")
    assert info["mask_voxels"] == 27
    data = np.asarray(nib.load(c).dataobj)
    np.testing.assert_array_equal(data[other == 0], arrays["voided"][other == 0])
    # files directly in the studies folder
    d, info = inpainting(studies / "flat_case-t1n-voided.nii.gz", {}, tmp_path)
    assert info["case"] == "flat_case" and nib.load(d).shape == arrays["mask"].shape


@pytest.mark.parametrize(
    "image, params, status, message",
    [
        ("inp_nomask", {}, 422, "case 'inp_nomask': no mask file"),
        ("inp_shape", {}, 422, "mask shape (31, 29, 26) differs from the image's (31, 29, 27)"),
        ("inp_affine", {}, 422, "mask affine differs from the image's"),
        ("inp_nonbinary", {}, 422, "mask is not binary"),
        ("inp_empty", {}, 422, "mask is empty"),
        ("inp_outside", {}, 422, "mask is outside the brain"),
        ("inp_ok/inp_ok-t1n.nii.gz", {}, 422, "'inp_ok-t1n.nii.gz' is not an inpainting case file"),
        ("inp_ok/nope-mask.nii.gz", {}, 404, "is not an inpainting case file"),
        ("inp_empty", {"sampler": "euler"}, 422, "'euler' is not a valid Sampler"),  # params first
        ("inp_ok", {"sampler": "rflow"}, 422, "cannot inpaint with"),
        ("inp_ok", {"sampler": "ddpm", "num_inference_steps": 10}, 422, "needs all 1000 steps"),
        ("inp_ok", {"num_inference_steps": 1001}, 422, "'num_inference_steps' must be an integer >= 1 and <= 1000"),
        ("inp_ok", {"jump_length": 0}, 422, "'jump_length' must be an integer >= 1"),
        ("inp_ok", {"jump_n_sample": 101}, 422, "'jump_n_sample' must be an integer >= 1 and <= 100"),
        ("inp_ok", {"jump_length": 3}, 422, "jump_length must be < the 3 sampling steps"),
        ("inp_ok", {"seed": "$1"}, 422, "'seed' must be an integer"),
        (
            "inp_ok",
            {"num_inference_steps": 1000, "jump_length": 1, "jump_n_sample": 20},
            422,
            "takes 19981 network evaluations; this server allows at most 10000 (conf max_network_calls)",
        ),
    ],
)
def test_bad_requests_name_the_problem(inpainting, inpainting_studies, tmp_path, image, params, status, message):
    with pytest.raises(RequestError) as err:
        inpainting(inpainting_studies[0] / image, params, tmp_path)
    assert err.value.status == status and message in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no result, no staged inputs left


def test_uploads_confinement_and_caps(repo_root, tiny_models, label_spec, inpainting, inpainting_studies, tmp_path):
    studies = inpainting_studies[0]
    voided = studies / "inp_ok" / "inp_ok-t1n-voided.nii.gz"
    with pytest.raises(RequestError, match="needs its mask"):
        inpainting(voided, {}, tmp_path, upload=True)
    with pytest.raises(RequestError, match="'case'"):
        inpainting(voided, {"case": "../x"}, tmp_path, mask=voided, upload=True)
    # a mask found beside the image must lie in the studies folder too
    escape = tmp_path / "studies" / "esc"
    escape.mkdir(parents=True)
    shutil.copy(voided, escape / "esc-t1n-voided.nii.gz")
    (escape / "esc-mask.nii.gz").symlink_to(studies / "inp_ok" / "inp_ok-mask.nii.gz")
    with pytest.raises(RequestError) as err:
        inpainting(escape, {}, tmp_path, root=tmp_path / "studies")
    assert err.value.status == 403 and "'esc-mask.nii.gz' resolves outside the studies folder" in str(err.value)
    small = _service(repo_root, tiny_models, label_spec, Limits(max_voxels=1000, max_network_calls=5))
    with pytest.raises(RequestError) as err:
        small(studies / "inp_ok", {}, tmp_path)
    assert err.value.status == 413 and "at most 1000 (conf max_voxels)" in str(err.value)
    with pytest.raises(RequestError, match="takes 7 network evaluations; this server allows at most 5"):
        small(studies / "inp_ok", {"jump_n_sample": 3}, tmp_path)
    with pytest.raises(RequestError, match="takes 5 network evaluations"):  # a default it can never serve
        InpaintingService(small.config, Limits(max_network_calls=4))


def test_network_calls_count_the_reverse_steps():
    for steps, length, n_sample in [(3, 1, 2), (10, 3, 4), (50, 10, 10), (1000, 10, 10), (7, 7, 1), (20, 1, 1)]:
        levels = resampling_schedule(list(range(steps - 1, -1, -1)), length, n_sample)
        assert network_calls(steps, length, n_sample) == sum(b < a for a, b in zip(levels, levels[1:]))
    assert network_calls(1000, 10, 10) == 9910 <= Limits().network_calls  # the config's default is served


def test_inpainting_conf_pairs(repo_root):
    configs = configs_from_conf({"inpainting#jump_length": "5", "inpainting#ckpt_path": "/m/wdm.pt"}, repo_root)
    assert configs["inpainting"].files == [str(repo_root / "configs" / "inference_inpaint.json")]
    assert configs["inpainting"].overrides == {
        "bundle_root": str(repo_root),
        "jump_length": 5,
        "ckpt_path": "/m/wdm.pt",
    }


def test_a_conditional_inpainting_model(repo_root, tiny_models, label_spec, inpainting_studies, tmp_path):
    """configs/inference_inpaint.json's default model kind: no RePaint jumps, one network call per step."""
    studies, arrays = inpainting_studies
    conf = {"ckpt_path": str(tiny_models / "inpainting" / "model.pt"), "sampler": "ddim", "num_inference_steps": 3}
    service = InpaintingService(BundleConfig(repo_root, label_spec.inpainting_configs, conf))
    defaults = service.defaults()
    assert defaults == {"seed": 0, "sampler": "ddim", "num_inference_steps": 3, "timestep_spacing": "linspace"}
    path, info = service(studies / "inp_ok", {"num_inference_steps": 4}, tmp_path)
    assert info["network_calls"] == 4 and "jump_length" not in info
    out, ref = nib.load(path), nib.load(studies / "inp_ok" / "inp_ok-t1n-voided.nii.gz")
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    data, mask = np.asarray(out.dataobj), arrays["mask"] > 0
    np.testing.assert_array_equal(data[~mask], arrays["voided"][~mask])
    with pytest.raises(RequestError, match=r"\['jump_length'\] apply to zero-shot RePaint"):
        service(studies / "inp_ok", {"jump_length": 2}, tmp_path)
    with pytest.raises(RequestError, match="'num_inference_steps' must be an integer >= 1 and <= 10"):
        InpaintingService(service.config, Limits(max_inference_steps=10)).sampling.build({"num_inference_steps": 11})


def test_timestep_spacing_is_a_closed_set(inpainting, inpainting_studies, tmp_path):
    studies = inpainting_studies[0]
    a, info = inpainting(studies / "inp_ok", {"timestep_spacing": "trailing"}, tmp_path)
    assert info["timestep_spacing"] == "trailing" and info["network_calls"] == 5
    b, info = inpainting(studies / "inp_ok", {}, tmp_path)
    assert info["timestep_spacing"] == "linspace"  # the config's
    assert not np.array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
    for value in ("cosine", "$@sampler", 1):
        with pytest.raises(RequestError, match="'timestep_spacing' must be one of linspace, leading, trailing"):
            inpainting(studies / "inp_ok", {"timestep_spacing": value}, tmp_path)
