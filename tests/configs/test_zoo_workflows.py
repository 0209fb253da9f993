"""The model zoo's CI pattern: `ConfigWorkflow` on each config with overrides only, `check_properties()`
reporting nothing missing, then `initialize()`, `run()`, `finalize()`: WDM and cWDM, train then infer."""

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from workflow_helpers import run_workflow

pytestmark = pytest.mark.slow

# a tiny network and a few iterations: the point is that every workflow runs end to end
SMALL = {"network_def#channels": [16, 32, 32], "network_def#num_res_blocks": 1, "network_def#norm_num_groups": 8}
SAMPLING = {"sampler": "ddim", "num_inference_steps": 2, "progress": False, "save_png": False}


def _run(repo_root, configs, workflow_type, **override):
    return run_workflow(repo_root, configs, workflow_type, check_properties=True, **override)


def _train_override(root, demo_data):
    return dict(
        bundle_root=str(root),
        dataset_dir=str(demo_data),
        datalist=str(demo_data / "datalist.json"),
        pad_crop_size=None,
        batch_size=2,
        num_iterations=4,
        epoch_length=2,
        save_every=4,
        preview_every=0,
        num_workers=0,
        cache_rate=0.0,
        ema_warmup_iters=1,
        **SMALL,
    )


def test_wdm_train_then_infer(repo_root, demo_data, tmp_path):
    wf = _run(repo_root, ["train.json"], "train", image_size=[32, 32, 32], **_train_override(tmp_path, demo_data))
    assert wf.trainer.state.iteration == 4 and wf.max_epochs == 2
    assert len(wf.train_dataset) == 16
    ckpt = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert ckpt["iteration"] == 4 and set(ckpt) >= {"model", "ema"}

    wf = _run(
        repo_root,
        ["inference.json"],
        "infer",
        bundle_root=str(tmp_path),
        image_size=[32, 32, 32],
        num_samples=2,
        batch_size=2,
        **SAMPLING,
        **SMALL,
    )
    assert wf.dataset == [0, 1] and wf.evaluator is wf.parser.get_parsed_content("generator")
    files = sorted((tmp_path / "samples").glob("*.nii.gz"))
    assert [f.name for f in files] == ["sample_0000.nii.gz", "sample_0001.nii.gz"]
    for f in files:
        data = nib.load(f).get_fdata()
        assert data.shape == (32, 32, 32) and -1 - 1e-6 <= data.min() < data.max() <= 1 + 1e-6


def _missing_contrast_cases(demo_data, out):
    """Two held-out demo cases with one contrast removed each: what inference_cwdm.json completes."""
    cases = {"BraTS-DEMO-00016-000": "t2f", "BraTS-DEMO-00017-000": "t1c"}
    for case, missing in cases.items():
        shutil.copytree(demo_data / case, out / case)
        (out / case / f"{case}-{missing}.nii.gz").unlink()
    return cases


def test_cwdm_train_then_infer(repo_root, demo_data, tmp_path):
    wf = _run(repo_root, ["train.json", "train_cwdm.json"], "train", **_train_override(tmp_path, demo_data))
    assert wf.trainer.state.iteration == 4
    assert wf.network_def.in_channels == 44  # unified: 8 + 4 x 8 + 4
    assert (tmp_path / "models" / "unified" / "model.pt").exists()

    cases = _missing_contrast_cases(demo_data, tmp_path / "val")
    out = tmp_path / "synthesis"
    wf = _run(
        repo_root,
        ["inference_cwdm.json"],
        "infer",
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "val"),
        output_dir=str(out),
        pad_crop_size=None,
        **SAMPLING,
        **SMALL,
    )
    assert [p.name for p in wf.dataset] == sorted(cases)
    for case, missing in cases.items():
        ref = nib.load(demo_data / case / f"{case}-t1n.nii.gz")
        img = nib.load(out / f"{case}-{missing}.nii.gz")
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        data = img.get_fdata()
        assert 0.0 <= data.min() and data.max() <= 1.0 + 1e-6 and data.std() > 0
