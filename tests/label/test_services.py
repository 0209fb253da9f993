"""The MONAI Label app's request handling, in-process (no monailabel needed): routes, geometry, errors."""

import nibabel as nib
import numpy as np
import pytest

from wdm_bundle.engines import centered_affine
from wdm_bundle.label import BundleConfig, GenerationService, RequestError, SynthesisService, configs_from_conf

pytestmark = pytest.mark.slow

FAST = {"num_inference_steps": 2}
SHAPE = (30, 28, 26)  # tests/label/conftest.py: the cases' shape


@pytest.fixture(scope="module")
def synthesis(repo_root, tiny_models, label_spec):
    return SynthesisService(
        BundleConfig(repo_root, label_spec.synthesis_configs, {"ckpt_dir": str(tiny_models), "sampler": "ddim"})
    )


def _stack(case_dir, contrasts, path):
    vols = [nib.load(case_dir / f"{case_dir.name}-{c}.nii.gz") for c in contrasts]
    nib.save(nib.Nifti1Image(np.stack([v.get_fdata(dtype=np.float32) for v in vols], -1), vols[0].affine), str(path))
    return path


def test_datastore_route_keeps_the_case_geometry(synthesis, studies, tmp_path, label_spec):
    path, info = synthesis(studies / "case_ok" / "case_ok-t1c.nii.gz", FAST, tmp_path)
    assert info["case"] == "case_ok" and info["synthesised"] == "t2f" and info["inputs"] == ["t1n", "t1c", "t2w"]
    assert info["num_inference_steps"] == 2 and info["sampler"] == "ddim"
    out, ref = nib.load(path), nib.load(studies / "case_ok" / "case_ok-t1n.nii.gz")
    assert out.shape == ref.shape == SHAPE
    np.testing.assert_allclose(out.affine, label_spec.oblique_affine(), atol=1e-5)
    data = out.get_fdata()
    assert out.get_data_dtype() == np.float32 and 0 <= data.min() and data.max() <= 1 and data.std() > 0
    assert np.all(data[ref.get_fdata() == 0] == 0)  # background of all inputs stays zero


def test_upload_route_matches_the_datastore_route(synthesis, studies, tmp_path, label_spec):
    upload = _stack(studies / "case_ok", ["t2w", "t1n", "t1c"], tmp_path / "upload.nii.gz")
    a, _ = synthesis(studies / "case_ok" / "case_ok-t1n.nii.gz", FAST, tmp_path)
    b, info = synthesis(upload, {**FAST, "contrasts": "t2w,t1n,t1c", "case": "case_ok"}, tmp_path)
    assert info["synthesised"] == "t2f"
    np.testing.assert_array_equal(nib.load(a).get_fdata(), nib.load(b).get_fdata())
    np.testing.assert_allclose(nib.load(b).affine, label_spec.oblique_affine(), atol=1e-5)
    c, _ = synthesis(upload, {**FAST, "contrasts": ["t2w", "t1n", "t1c"], "case": "case_ok", "seed": 7}, tmp_path)
    assert not np.array_equal(nib.load(a).get_fdata(), nib.load(c).get_fdata())  # the seed is used


def test_target_of_a_complete_case(synthesis, studies, tmp_path):
    path, info = synthesis(studies / "case_complete" / "case_complete-t2f.nii.gz", {**FAST, "target": "t1c"}, tmp_path)
    assert info["synthesised"] == "t1c" and info["inputs"] == ["t1n", "t2w", "t2f"]
    assert nib.load(path).shape == SHAPE


@pytest.mark.parametrize(
    "image, params, status, message",
    [
        ("case_two_missing/case_two_missing-t1n.nii.gz", {}, 422, "2 contrasts are missing (t2w, t2f)"),
        (
            "case_shapes/case_shapes-t1n.nii.gz",
            {},
            422,
            "inputs have different shapes: t1n (30, 28, 26), t1c (30, 28, 24)",
        ),
        ("case_unreadable/case_unreadable-t1n.nii.gz", {}, 422, "case_unreadable-t1c.nii.gz: cannot be read as NIfTI"),
        ("case_complete/case_complete-t1n.nii.gz", {}, 422, "no contrast is missing"),
        ("case_ok/nope-t1n.nii.gz", {}, 404, "not found"),
        ("case_ok/case_ok-t1n.nii.gz", {"target": "pd"}, 422, "cannot synthesise 'pd'"),
        ("case_ok/case_ok-t1n.nii.gz", {"sampler": "euler"}, 422, "cannot sample with {'sampler': 'euler'}"),
        (
            "case_ok/case_ok-t1n.nii.gz",
            {"num_inference_steps": 0},
            422,
            "'num_inference_steps' must be an integer >= 1",
        ),
        ("case_ok/case_ok-t1n.nii.gz", {"seed": "abc"}, 422, "'seed' must be an integer"),
        (
            "case_ok/case_ok-t1n.nii.gz",
            {"contrasts": ["t1n", "t1c"]},
            422,
            "has shape (30, 28, 26), but 'contrasts' names 2",
        ),
        ("case_ok/case_ok-t1n.nii.gz", {"contrasts": ["t1n", "flair"]}, 422, "unknown contrast(s) ['flair']"),
    ],
)
def test_bad_requests_name_the_problem(synthesis, studies, tmp_path, image, params, status, message):
    with pytest.raises(RequestError) as err:
        synthesis(studies / image, params, tmp_path)
    assert err.value.status == status and message in str(err.value)


def test_unreadable_or_misnamed_upload(synthesis, tmp_path):
    garbage = tmp_path / "upload.nii.gz"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(RequestError, match="uploaded file cannot be read as NIfTI"):
        synthesis(garbage, {"contrasts": ["t1n", "t1c", "t2w"]}, tmp_path)
    with pytest.raises(RequestError, match="is not named <case>-<contrast>.nii.gz"):
        synthesis(garbage, {}, tmp_path)


def test_generation_returns_a_volume_of_the_configured_size(repo_root, tiny_models, tmp_path, label_spec):
    gen = GenerationService(
        BundleConfig(
            repo_root, label_spec.generation_configs, {"ckpt_path": str(tiny_models / "model.pt"), "sampler": "ddim"}
        )
    )
    a, info = gen({**FAST, "seed": 3}, tmp_path)
    b, _ = gen({**FAST, "seed": 3}, tmp_path)
    c, _ = gen({**FAST, "seed": 4, "sampler": "ddpm", "num_inference_steps": 3}, tmp_path)
    assert info.pop("timestep_spacing", "linspace") == "linspace"  # the config's (configs/inference.json)
    assert info == {"seed": 3, "shape": [32, 32, 32], "sampler": "ddim", "num_inference_steps": 2}
    img = nib.load(a)
    assert img.shape == (32, 32, 32)
    np.testing.assert_allclose(img.affine, centered_affine((32, 32, 32), (5.0, 6.0, 5.0)))
    np.testing.assert_array_equal(img.get_fdata(), nib.load(b).get_fdata())
    assert not np.array_equal(img.get_fdata(), nib.load(c).get_fdata())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({p.name for p in map(type(tmp_path), (a, b, c))})


def test_conf_pairs_become_config_overrides(repo_root, label_spec):
    conf = {
        "synthesis_configs": ",".join(label_spec.synthesis_configs),
        "synthesis#num_inference_steps": "5",
        "synthesis#network_def#channels": "[8,16,16]",
        "generation#sampler": "ddim",
        "server_mode": "true",
    }
    configs = configs_from_conf(conf, repo_root)
    assert configs["synthesis"].overrides == {
        "bundle_root": str(repo_root),
        "num_inference_steps": 5,
        "network_def#channels": [8, 16, 16],
    }
    assert configs["synthesis"].parser()["network_def"]["channels"] == [8, 16, 16]
    assert configs["generation"].files == [str(repo_root / "configs" / "inference.json")]
    with pytest.raises(FileNotFoundError, match="nope.json"):
        configs_from_conf({"generation_configs": "configs/nope.json"}, repo_root)


def test_request_values_are_checked_against_closed_sets(synthesis):
    from wdm_bundle.label.inputs import parse_params
    from wdm_bundle.label.services import Limits, Sampling

    record = synthesis.synthesizer.record
    sampling = Sampling(record, "ddim", 2, Limits(max_inference_steps=10))
    for params, message in [
        ({"sampler": "$__import__('os').getcwd() and 'ddim'"}, "is not a valid Sampler"),
        ({"num_inference_steps": "@num_train_timesteps"}, "must be an integer"),
        ({"num_inference_steps": 1e400}, "must be an integer >= 1 and <= 10"),
        ({"num_inference_steps": 11}, "<= 10"),
    ]:
        with pytest.raises(RequestError) as err:
            sampling.build(params)
        assert message in str(err.value) and err.value.status == 422
    assert sampling.build({"sampler": "ddpm", "num_inference_steps": 3})[1] == {
        "sampler": "ddpm",
        "num_inference_steps": 3,
    }
    with pytest.raises(RequestError, match="takes 1000 steps"):  # DDPM's implicit T steps count against the cap
        Sampling(record, "ddpm", None, Limits(max_inference_steps=10))
    for text in ("[1]", "nope", '{"a": NaN}'):
        with pytest.raises(RequestError, match="'params'"):
            parse_params(text)
