"""Sampling from the exported TorchScript file (configs/inference_exported.json) gives the samples of sampling from
the checkpoint (configs/inference.json), seed for seed; the record is read from the file, never re-declared."""

import nibabel as nib
import numpy as np
import pytest
from workflow_helpers import error_messages, run_workflow, workflow

pytestmark = pytest.mark.slow

SAMPLING = {
    "num_samples": 2,
    "batch_size": 2,
    "seed": 3,
    "sampler": "ddim",
    "num_inference_steps": 3,
    "progress": False,
    "save_png": False,
    "device": "cpu",
}
EXPORTED = ["inference.json", "inference_exported.json"]


@pytest.fixture(scope="module")
def bundle(export_script, checkpoint):
    """The checkpoint's bundle root, with ``models/model.ts`` exported from it."""
    export_script.export_checkpoint(str(checkpoint), str(checkpoint.parent / "model.ts"), overwrite=True)
    return checkpoint.parent.parent


def test_exported_file_samples_like_the_checkpoint(repo_root, bundle, tmp_path):
    run_workflow(
        repo_root,
        ["inference.json"],
        "infer",
        check_properties=True,
        bundle_root=str(bundle),
        output_dir=str(tmp_path / "eager"),
        **SAMPLING,
    )
    wf = run_workflow(
        repo_root,
        EXPORTED,
        "infer",
        check_properties=True,
        bundle_root=str(bundle),
        output_dir=str(tmp_path / "exported"),
        **SAMPLING,
    )
    assert wf.parser.get_parsed_content("record")["image_size"] == [32, 32, 32]  # from inside model.ts
    names = sorted(p.name for p in (tmp_path / "eager").glob("*.nii.gz"))
    assert names == ["sample_0000.nii.gz", "sample_0001.nii.gz"]
    assert names == sorted(p.name for p in (tmp_path / "exported").glob("*.nii.gz"))
    for name in names:
        eager = nib.load(tmp_path / "eager" / name).get_fdata()
        exported_img = nib.load(tmp_path / "exported" / name)
        np.testing.assert_allclose(exported_img.header.get_zooms(), [5.0, 6.0, 5.0])  # the recorded spacing
        exported = exported_img.get_fdata()
        assert eager.shape == (32, 32, 32) and eager.std() > 0.01
        diff = np.abs(eager - exported).max()
        print(f"{name}: max |exported - eager| = {diff:.3g}")
        assert diff <= 1e-4


def test_exported_inference_refuses_settings_that_contradict_the_file(repo_root, bundle, tmp_path):
    with pytest.raises(Exception) as err:
        workflow(
            repo_root,
            EXPORTED,
            "infer",
            bundle_root=str(bundle),
            output_dir=str(tmp_path),
            image_size=[64] * 3,
            **SAMPLING,
        ).parser.get_parsed_content("network")
    assert "image_size: [64, 64, 64] given, [32, 32, 32] recorded" in error_messages(err.value)
    assert "inside" in error_messages(err.value) and "model.ts" in error_messages(err.value)
