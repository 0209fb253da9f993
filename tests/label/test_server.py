"""A real MONAI Label server (its own env, see `label_python`) serving apps/monailabel_wdm on loopback."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.engines import centered_affine
from wdm_bundle.label import BundleConfig, InpaintingService, SynthesisService

pytestmark = pytest.mark.label

STEPS = 2  # DDIM steps (fast; the app reads sampler and steps from the config overrides below)


@pytest.fixture(scope="module")
def server(label_python, repo_root, tiny_models, demo_case, label_spec, tmp_path_factory):
    """Start ``monailabel start_server`` with the app; yields (url, studies folder, process); SIGTERM at the end."""
    _post.form = label_spec.post  # conftest's post_form (conftest modules are not imported by name)
    tmp = tmp_path_factory.mktemp("label_server")
    studies = label_spec.make_studies(tmp / "studies", demo_case)
    inpainting = label_spec.make_inpainting_studies(studies, demo_case)
    outside = tmp / "outside"  # a mask beside a case's image that resolves out of the studies folder
    outside.mkdir()
    shutil.copy(studies / "inp_ok" / "inp_ok-mask.nii.gz", outside / "mask.nii.gz")
    (studies / "inp_esc").mkdir()
    shutil.copy(studies / "inp_ok" / "inp_ok-t1n-voided.nii.gz", studies / "inp_esc" / "inp_esc-t1n-voided.nii.gz")
    (studies / "inp_esc" / "inp_esc-mask.nii.gz").symlink_to(outside / "mask.nii.gz")
    conf = {
        "bundle_root": str(repo_root),
        "synthesis_configs": ",".join(label_spec.synthesis_configs),
        "generation_configs": ",".join(label_spec.generation_configs),
        "synthesis#ckpt_dir": str(tiny_models),
        "synthesis#num_inference_steps": str(STEPS),
        "synthesis#sampler": "ddim",
        "generation#ckpt_path": str(tiny_models / "model.pt"),
        "generation#num_inference_steps": str(STEPS),
        "generation#sampler": "ddim",
        "inpainting_configs": ",".join(label_spec.inpainting_configs),
        "inpainting#ckpt_path": str(tiny_models / "model.pt"),
        **{f"inpainting#{k}": str(v) for k, v in label_spec.inpainting_fast.items()},
    }
    with label_spec.run_server(label_python, repo_root, studies, tmp, conf) as server:
        yield {**server, "inpainting": inpainting, "tmp": tmp}


def _post(*args, **kwargs):
    return _post.form(*args, **kwargs)


def _nifti(body, path):
    path.write_bytes(body)
    return nib.load(path)


def test_info_lists_the_tasks(server, label_spec):
    models = server["info"]["models"]
    assert set(models) == {"synthesis", "generation", "inpainting"}
    assert models["synthesis"]["config"]["num_inference_steps"] == STEPS
    config = models["inpainting"]["config"]
    assert {k: config.get(k) for k in ("seed", *label_spec.inpainting_fast)} == {
        "seed": 0,
        **label_spec.inpainting_fast,
    }


def test_synthesis_from_the_datastore(server, repo_root, tiny_models, label_spec, tmp_path):
    status, body = _post(server["url"], "/infer/synthesis", {"image": "case_ok", "output": "image"})
    assert status == 200, body[:500]
    out = _nifti(body, tmp_path / "out.nii.gz")
    ref = nib.load(server["studies"] / "case_ok" / "case_ok-t1n.nii.gz")
    assert out.shape == ref.shape == label_spec.shape
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
    np.testing.assert_allclose(out.affine, label_spec.oblique_affine(), atol=1e-5)
    # the same bundle config and weights in this process (torch 2.13 here, 2.14 in the server) give the same volume
    local = SynthesisService(
        BundleConfig(
            repo_root,
            label_spec.synthesis_configs,
            {"ckpt_dir": str(tiny_models), "num_inference_steps": STEPS, "sampler": "ddim"},
        )
    )
    expected, _ = local(server["studies"] / "case_ok" / "case_ok-t2w.nii.gz", {}, tmp_path)
    np.testing.assert_allclose(out.get_fdata(), nib.load(expected).get_fdata(), atol=1e-4)
    # ids of a file also work, as path or stem; params come back with output=json
    for image in ("case_ok/case_ok-t1c", "case_ok-t2w"):
        status, body = _post(server["url"], "/infer/synthesis", {"image": image, "output": "json"})
        assert status == 200 and json.loads(body)["synthesised"] == "t2f", body[:500]


def test_synthesis_from_an_upload(server, tmp_path, label_spec):
    case = server["studies"] / "case_ok"
    vols = [nib.load(case / f"case_ok-{c}.nii.gz") for c in ("t1n", "t1c", "t2w")]
    stack = nib.Nifti1Image(np.stack([v.get_fdata(dtype=np.float32) for v in vols], -1), vols[0].affine)
    nib.save(stack, str(tmp_path / "stack.nii.gz"))
    upload = {"file": ("stack.nii.gz", (tmp_path / "stack.nii.gz").read_bytes())}
    status, body = _post(
        server["url"],
        "/infer/synthesis",
        {"output": "image"},
        upload,
        {"contrasts": ["t1n", "t1c", "t2w"], "case": "case_ok"},
    )
    assert status == 200, body[:500]
    out = _nifti(body, tmp_path / "up.nii.gz")
    assert out.shape == label_spec.shape
    np.testing.assert_allclose(out.affine, label_spec.oblique_affine(), atol=1e-5)
    status, body = _post(server["url"], "/infer/synthesis", {"image": "case_ok", "output": "image"})
    np.testing.assert_array_equal(out.get_fdata(), _nifti(body, tmp_path / "ds.nii.gz").get_fdata())

    # multi-file route: each contrast file into the datastore (flat: <studies>/<case>-<contrast>.nii.gz), then infer
    for c in ("t1n", "t1c", "t2w"):
        upload = {"file": (f"case_ok-{c}.nii.gz", (case / f"case_ok-{c}.nii.gz").read_bytes())}
        status, body = _post(server["url"], "/datastore/image", {"image": f"new_case-{c}"}, upload, method="PUT")
        assert status == 200, body[:500]
    status, body = _post(server["url"], "/infer/synthesis", {"image": "new_case-t1n", "output": "image"})
    assert status == 200, body[:500]
    assert (server["studies"] / "new_case-t2w.nii.gz").is_file()
    out = _nifti(body, tmp_path / "multi.nii.gz")
    assert out.shape == label_spec.shape
    np.testing.assert_allclose(out.affine, label_spec.oblique_affine(), atol=1e-5)


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_running(server, tmp_path):
    garbage = {"file": ("x.nii.gz", b"\x1f\x8b not really gzip")}
    good = nib.load(server["studies"] / "case_ok" / "case_ok-t1n.nii.gz")
    nib.save(good, str(tmp_path / "one.nii.gz"))
    one = {"file": ("one.nii.gz", (tmp_path / "one.nii.gz").read_bytes())}
    cases = [
        ({"image": "case_two_missing"}, None, None, 422, "2 contrasts are missing (t2w, t2f)"),
        ({"image": "case_shapes"}, None, None, 422, "inputs have different shapes: t1n (30, 28, 26), t1c (30, 28, 24)"),
        (
            {"image": "case_unreadable/case_unreadable-t1n"},
            None,
            None,
            422,
            "case_unreadable-t1c.nii.gz: cannot be read as NIfTI",
        ),
        ({"image": "case_complete"}, None, None, 422, "no contrast is missing"),
        ({"image": "no_such_case"}, None, None, 404, "image 'no_such_case' is not in the datastore"),
        ({}, garbage, {"contrasts": ["t1n", "t1c", "t2w"]}, 422, "uploaded file cannot be read as NIfTI"),
        ({}, one, {"contrasts": ["t1n", "t1c", "t2w"]}, 422, "has shape (30, 28, 26), but 'contrasts' names 3"),
        ({}, one, None, 422, "is not named <case>-<contrast>.nii.gz"),
        ({"image": "case_ok"}, None, {"sampler": "euler"}, 422, "'euler' is not a valid Sampler"),
        ({"image": "case_ok"}, None, {"target": "pd"}, 422, "cannot synthesise 'pd'"),
    ]
    for query, files, params, status, message in cases:
        got, body = _post(server["url"], "/infer/synthesis", {**query, "output": "image"}, files, params)
        assert got == status and message in json.loads(body)["detail"], (query, params, got, body[:500])
        assert server["proc"].poll() is None
    status, body = _post(server["url"], "/infer/synthesis", {"image": "case_ok", "output": "image"})
    assert status == 200 and _nifti(body, tmp_path / "after.nii.gz").shape == (30, 28, 26)


def test_generation_returns_a_volume_of_the_configured_size(server, tmp_path):
    status, body = _post(
        server["url"], "/infer/generation", {"image": "generate", "output": "image"}, params={"seed": 5}
    )
    assert status == 200, body[:500]
    img = _nifti(body, tmp_path / "gen.nii.gz")
    assert img.shape == (32, 32, 32)  # the recorded image_size (tests/label/conftest.py tiny_models)
    np.testing.assert_allclose(img.affine, centered_affine((32, 32, 32), (5.0, 6.0, 5.0)))
    data = img.get_fdata()
    assert np.isfinite(data).all() and data.std() > 0 and -1 <= data.min() and data.max() <= 1
    status, body = _post(
        server["url"],
        "/infer/generation",
        {"image": "generate", "output": "json"},
        params={"seed": 5, "num_inference_steps": 0},
    )
    assert status == 422 and "'num_inference_steps' must be an integer >= 1" in json.loads(body)["detail"]


def _inpaint(server, query, files=None, params=None):
    return _post(server["url"], "/infer/inpainting", {"output": "image", **query}, files, params)


def test_inpainting_keeps_the_grid_and_the_known_voxels(server, repo_root, tiny_models, label_spec, tmp_path):
    arrays, case = server["inpainting"], server["studies"] / "inp_ok"
    status, body = _inpaint(server, {"image": "inp_ok"}, params={"seed": 2})
    assert status == 200, body[:500]
    assert 'filename="inp_ok-t1n-inference.nii.gz"' in label_spec.post.last_headers.get("content-disposition", "")
    out, ref = _nifti(body, tmp_path / "out.nii.gz"), nib.load(case / "inp_ok-t1n-voided.nii.gz")
    assert out.shape == ref.shape == label_spec.inpaint_shape  # odd, oblique: mapped back exactly
    np.testing.assert_array_equal(out.affine, ref.affine)
    np.testing.assert_array_equal(out.header.get_zooms(), ref.header.get_zooms())
    data, mask = np.asarray(out.dataobj), arrays["mask"] > 0
    np.testing.assert_array_equal(data[~mask], arrays["voided"][~mask])
    assert np.isfinite(data).all() and (data[mask] != 0).all()
    # the same config and weights in this process (torch 2.13 here, 2.14 in the server) fill the same values
    local = InpaintingService(
        BundleConfig(
            repo_root,
            label_spec.inpainting_configs,
            {"ckpt_path": str(tiny_models / "model.pt"), **label_spec.inpainting_fast},
        )
    )
    expected, _ = local(case, {"seed": 2}, tmp_path)
    np.testing.assert_allclose(data, np.asarray(nib.load(expected).dataobj), rtol=1e-4, atol=1e-2)
    # other ids of the case (its image, its mask by stem) and a flat case; params come back with output=json
    for image in ("inp_ok/inp_ok-t1n-voided", "inp_ok-mask", "flat_case-t1n-voided"):
        status, body = _inpaint(server, {"image": image, "output": "json"}, params={"seed": 2})
        assert status == 200, body[:500]
        info = json.loads(body)
        assert info["shape"] == list(label_spec.inpaint_shape) and info["network_calls"] == 5, info


def test_inpainting_uploads(server, label_spec, tmp_path):
    case, arrays = server["studies"] / "inp_ok", server["inpainting"]
    image = ("voided.nii.gz", (case / "inp_ok-t1n-voided.nii.gz").read_bytes())
    mask = ("mask.nii.gz", (case / "inp_ok-mask.nii.gz").read_bytes())
    status, body = _inpaint(server, {}, {"file": image, "mask": mask}, {"case": "inp_ok", "seed": 2})
    assert status == 200, body[:500]
    uploaded = np.asarray(_nifti(body, tmp_path / "up.nii.gz").dataobj)
    status, body = _inpaint(server, {"image": "inp_ok"}, params={"seed": 2})
    np.testing.assert_array_equal(uploaded, np.asarray(_nifti(body, tmp_path / "ds.nii.gz").dataobj))
    # a datastore image with an uploaded mask of another region
    other = np.zeros(label_spec.inpaint_shape, np.float32)
    other[10:13, 10:13, 10:13] = 1
    nib.save(nib.Nifti1Image(other, label_spec.oblique_affine()), str(tmp_path / "other.nii.gz"))
    status, body = _inpaint(
        server, {"image": "inp_ok"}, {"mask": ("o.nii.gz", (tmp_path / "other.nii.gz").read_bytes())}
    )
    assert status == 200, body[:500]
    data = np.asarray(_nifti(body, tmp_path / "other_out.nii.gz").dataobj)
    np.testing.assert_array_equal(data[other == 0], arrays["voided"][other == 0])


def test_inpainting_bad_requests_get_a_clear_4xx(server):
    case = server["studies"] / "inp_ok"
    image = {"file": ("v.nii.gz", (case / "inp_ok-t1n-voided.nii.gz").read_bytes())}
    mask = ("m.nii.gz", (case / "inp_ok-mask.nii.gz").read_bytes())
    many = {"num_inference_steps": 1000, "jump_length": 1, "jump_n_sample": 20}
    cases = [
        ({"image": "inp_nomask"}, None, None, 422, "case 'inp_nomask': no mask file 'inp_nomask-mask.nii.gz'"),
        ({"image": "inp_shape"}, None, None, 422, "mask shape (31, 29, 26) differs from the image's (31, 29, 27)"),
        ({"image": "inp_affine"}, None, None, 422, "mask affine differs from the image's"),
        ({"image": "inp_nonbinary"}, None, None, 422, "mask is not binary"),
        ({"image": "inp_empty"}, None, None, 422, "mask is empty"),
        ({"image": "inp_outside"}, None, None, 422, "mask is outside the brain"),
        ({"image": "inp_ok/inp_ok-t1n"}, None, None, 422, "'inp_ok-t1n.nii.gz' is not an inpainting case file"),
        (
            {"image": "inp_esc/inp_esc-t1n-voided"},
            None,
            None,
            403,
            "'inp_esc-mask.nii.gz' resolves outside the studies folder",
        ),
        ({"image": "no_such_case"}, None, None, 404, "image 'no_such_case' is not in the datastore"),
        ({"image": "../outside/mask"}, None, None, 422, "'image' must be a datastore id"),
        ({"image": str(server["tmp"] / "outside" / "mask")}, None, None, 422, "'image' must be a datastore id"),
        ({}, None, None, 422, "pass 'image'"),
        ({}, image, None, 422, "an uploaded image needs its mask"),
        ({}, {**image, "mask": mask}, {"case": "../x"}, 422, "'case'"),
        ({}, {**image, "mask": ("e.nii.gz", b"")}, None, 422, "the uploaded file is empty"),
        ({"image": "inp_empty"}, None, {"sampler": "euler"}, 422, "'euler' is not a valid Sampler"),
        ({"image": "inp_ok"}, None, {"jump_n_sample": 101}, 422, "'jump_n_sample' must be an integer >= 1 and <= 100"),
        ({"image": "inp_ok"}, None, {"seed": "$1"}, 422, "'seed' must be an integer"),
        ({"image": "inp_ok"}, None, many, 422, "takes 19981 network evaluations; this server allows at most 10000"),
        ({"image": "inp_ok"}, None, {"ckpt_path": "/x.pt"}, 422, "unknown param(s) ['ckpt_path']"),
        ({"image": "inp_ok"}, None, {"timestep_spacing": "x"}, 422, "'timestep_spacing' must be one of"),
    ]
    for query, files, params, status, message in cases:
        got, body = _inpaint(server, {**query, "output": "json"}, files, params)
        detail = json.loads(body)["detail"]
        assert got == status and message in detail, (query, params, got, body[:500])
        assert str(server["tmp"]) not in detail and server["proc"].poll() is None
    got, body = _post(server["url"], "/infer/synthesis", {"image": "case_ok", "output": "json"}, {"mask": mask})
    assert got == 422 and "task 'synthesis' takes no 'mask' upload" in json.loads(body)["detail"]
